"""A KV-cached sampling loop for CPU rollouts: HF `generate`'s sampling semantics without its per-step overhead.

Per step it runs one forward on the last token with a `DynamicCache`, applies HF's own `TemperatureLogitsWarper` and
`TopPLogitsWarper` (so temperature / top-p mean exactly what they mean in `model.generate` and in vLLM) and draws
from that distribution by inverse CDF; temperature 0 is greedy (argmax), token for token what
`generate(do_sample=False)` gives.
What it does differently, for speed: a prompt repeated n times (OpenRLHF's --rollout.n_samples_per_prompt) is
prefilled once and its cache copied to its n rows; the prefix all prompts share (the system prompt) is prefilled
once for all of them; rows that produced eos leave the batch (their cache rows are dropped), so the later steps
only pay for unfinished rows.
"""

import os

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper


def next_token_scores(temperature: float, top_p: float) -> LogitsProcessorList:
    """HF's warpers in HF's order (temperature, then top-p), as `generate(do_sample=True, top_k=0)` builds them."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


@torch.inference_mode()
def decode(model, prompts, copies, max_new_tokens, temperature, top_p, eos_id, pad_id):
    """Sample `copies[i]` responses to each prompt `prompts[i]` (token id lists) in one batch.

    Returns the responses in row order (prompt 0's copies first), each up to and including its first eos."""
    device = next(model.parameters()).device  # inputs go where the policy is (--device cuda)
    rows = torch.arange(len(prompts)).repeat_interleave(torch.tensor(copies)).to(device)
    cache = DynamicCache(config=model.config)
    # The tokens every prompt starts with (the chat template's system prompt, about half of a demo prompt) are
    # prefilled once and their cache copied to every prompt; each prompt keeps at least its last token to prefill.
    shared = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1) if len(prompts) > 1 else 0
    if shared:
        model(input_ids=torch.tensor([prompts[0][:shared]], device=device), past_key_values=cache)
        cache.reorder_cache(torch.zeros(len(prompts), dtype=torch.long, device=device))
    width = max(len(p) - shared for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p) + shared) + p[shared:] for p in prompts], device=device)
    # [shared prefix][padding][rest of the prompt]: the padding sits between them, masked as left padding is, and
    # positions count real tokens only, as `generate` derives them from the attention mask.
    mask = torch.tensor([[1] * shared + [0] * (width - len(p) + shared) + [1] * (len(p) - shared) for p in prompts],
                        device=device)  # fmt: skip
    positions = (mask.cumsum(-1) - 1)[:, shared:].masked_fill(mask[:, shared:] == 0, 0)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
    ).logits[:, -1]
    cache.reorder_cache(rows)  # each prompt's cache, once per sample
    logits, mask, last = logits[rows], mask[rows], positions[rows, -1:]

    warpers = next_token_scores(temperature, top_p) if temperature > 0 else None
    out = [[] for _ in range(len(rows))]
    live = torch.arange(len(rows))  # output row of each batch row still decoding
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = warpers(None, logits.float()).softmax(-1)
            # Inverse-CDF draw, the same categorical distribution as torch.multinomial: one uniform per row instead
            # of multinomial's one exponential per vocabulary entry (49k per row, 45 ms a step on one CPU core).
            # Zero-probability tokens (cut by top-p) own an empty interval, so side="right" never lands on one.
            cdf = probs.double().cumsum(-1)
            draw = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
            tokens = torch.searchsorted(cdf, draw, side="right").squeeze(1).clamp_(max=cdf.shape[-1] - 1)
        else:
            tokens = logits.argmax(-1)
        for row, token in zip(live.tolist(), tokens.tolist()):
            out[row].append(token)
        going = tokens != eos_id
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():  # drop finished rows from the batch and the cache
            keep = going.nonzero().squeeze(1)
            live, tokens, mask, last = live[keep.cpu()], tokens[keep], mask[keep], last[keep]
            cache.reorder_cache(keep)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        last = last + 1
        logits = model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=last, past_key_values=cache
        ).logits[:, -1]
    return out
