"""The KV-cached rollout loop (`moslim_plugin.demo.rollout.decode`, used by `policy.generate`) against HF generate.

A tiny random-init Llama with SmolLM2's tokenizer keeps these fast; what is checked is that the loop computes what HF
`generate` computes (greedy token for token, sampling from the same temperature / top-p distribution), not what the
weights know.
"""

import pytest
import torch
from helpers_models import tiny_policy_config

from moslim_plugin.demo.policy import generate, load_policy
from moslim_plugin.demo.rollout import decode

QUESTIONS = ["Name a fruit.", "Say hi, please, in a long and friendly way.", "Count to three.", "Name a color."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_policy_config(tok, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Untied: a random tied model just repeats its input token. A scaled head gives peaked next-token distributions,
    # so a few thousand samples can tell temperatures apart (greedy is unchanged by the scale).
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    path = tmp_path_factory.mktemp("tiny_rollout_policy")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return load_policy(path)


def hf_generate(model, tok, questions, max_new_tokens, eos_id):
    """HF greedy generate on left-padded chats: the reference the loop must match token for token."""
    chats = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in questions]  # fmt: skip
    enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_id,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    responses = []
    for row in out[:, enc.input_ids.shape[1] :].tolist():
        responses.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return [ids[m.bool()].tolist() for ids, m in zip(enc.input_ids, enc.attention_mask)], responses


@pytest.mark.integration
def test_greedy_generate_matches_hf_generate_token_for_token_with_repeated_prompts(tiny):
    model, tok = tiny
    questions = [q for q in QUESTIONS for _ in range(2)]  # repeated chats share one prefill in the loop
    _, expected = hf_generate(model, tok, questions, 12, tok.eos_token_id)
    messages = [[{"role": "user", "content": q}] for q in questions]
    prompt_ids, responses, texts = generate(model, tok, messages, 12, temperature=0.0, batch_size=3, desc=False)
    assert responses == expected
    assert prompt_ids == hf_generate(model, tok, questions, 1, tok.eos_token_id)[0]
    assert texts == [tok.decode(r, skip_special_tokens=True).strip() for r in expected]


@pytest.mark.integration
def test_greedy_decode_drops_finished_rows_and_still_matches_hf_generate(tiny):
    model, tok = tiny
    _, free = hf_generate(model, tok, QUESTIONS, 10, eos_id=-1)
    # As eos, a token some row emits mid-way and some other row never emits: one row leaves early, another runs on.
    eos = next(t for row in free for t in row[1:-1] if t not in row[: row.index(t)] and any(t not in r for r in free))
    prompts, expected = hf_generate(model, tok, QUESTIONS, 10, eos_id=eos)
    assert 1 < min(map(len, expected)) and max(map(len, expected)) == 10  # both paths exercised
    got = decode(model, prompts, [1] * len(prompts), 10, 0.0, 1.0, eos_id=eos, pad_id=tok.pad_token_id)
    assert got == expected


def reference_probs(model, tok, question, temperature, top_p):
    """Next-token distribution written out by hand: softmax(logits / T), then the smallest top set with mass >= p."""
    chat = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tok(chat, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        probs = (model(input_ids=ids).logits[0, -1] / temperature).softmax(-1)
    sorted_probs, index = probs.sort(descending=True)
    keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p  # mass before this token is still short of p
    out = torch.zeros_like(probs)
    out[index[keep]] = sorted_probs[keep] / sorted_probs[keep].sum()
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_sampled_first_tokens_follow_the_requested_temperature_and_top_p(tiny):
    model, tok = tiny
    question, temperature, top_p = QUESTIONS[1], 0.7, 0.9
    chat = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    prompt = tok(chat, add_special_tokens=False).input_ids
    torch.manual_seed(0)
    counts = torch.zeros(len(tok))
    for _ in range(10):
        for response in decode(model, [prompt], [400], 1, temperature, top_p, tok.eos_token_id, tok.pad_token_id):
            counts[response[0]] += 1
    empirical = counts / counts.sum()
    expected = reference_probs(model, tok, question, temperature, top_p)
    plain = reference_probs(model, tok, question, 1.0, 1.0)
    assert 0.5 * (expected - plain).abs().sum() > 0.1  # the test can tell temperature/top-p from plain sampling
    assert 0.5 * (empirical - expected).abs().sum() < 0.04  # total variation, 4000 draws
    assert empirical[expected == 0].sum() == 0  # nothing outside the top-p set is ever sampled


@pytest.mark.integration
def test_the_system_prompt_every_prompt_shares_is_prefilled_once_and_decoding_still_matches_hf_generate(tiny):
    model, tok = tiny
    prompts, expected = hf_generate(model, tok, QUESTIONS, 8, tok.eos_token_id)
    shared = next(i for i in range(min(map(len, prompts))) if len({p[i] for p in prompts}) > 1)
    assert shared > 10  # SmolLM2's chat template starts every chat with the same system prompt
    shapes = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)  # fmt: skip
    try:
        got = decode(model, prompts, [2] * len(prompts), 8, 0.0, 1.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    finally:
        hook.remove()
    assert got == [r for r in expected for _ in range(2)]
    # One row for the shared prefix, then each prompt's own tokens (left-padded to the longest), then decoding.
    assert shapes[0] == (1, shared)
    assert shapes[1] == (len(prompts), max(map(len, prompts)) - shared)
    assert all(s[1] == 1 for s in shapes[2:])
