"""The RiC (rewards-in-context) baseline: supervised fine-tuning of the policy on its own samples, each directive
relabelled to the levels the response actually has. It needs no reward model and no RL, only the samples MOSLIM's
reward model is trained on, and it conditions on the same directive.
"""

import random

import torch
from tqdm import tqdm

from moslim_plugin.demo.local_rl import make_experience


def ric_sft(model, tokenizer, demo, samples, epochs, seed, lr=None):
    """Rewards-in-context: maximise log p(response | directive requesting the levels it actually has). `seed` orders
    the samples; `lr` defaults to the RL learning rate (bench/demo_ablation.py tunes it)."""
    from openrlhf.models import Actor

    micro_batch_size = demo.args.rollout.micro_batch_size
    actor = Actor(model)
    actor.packing_samples = False
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=demo.args.actor.adam.lr if lr is None else lr)
    rng = random.Random(seed)
    losses = []
    for epoch in range(epochs):
        order = rng.sample(range(len(samples)), len(samples))
        for start in tqdm(range(0, len(order), micro_batch_size), desc=f"RiC SFT epoch {epoch + 1}", leave=False):
            batch = [samples[i] for i in order[start : start + micro_batch_size]]
            chats = [demo.chat(s["question"], s["labels"]) for s in batch]
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
            prompt_ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
            response_ids = [tokenizer(s["response"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
                            for s in batch]  # fmt: skip
            exp = make_experience(prompt_ids, response_ids, tokenizer.pad_token_id, tokenizer.eos_token_id)
            exp = exp.to_device(next(model.parameters()).device)
            actor.train()
            log_probs = actor(exp.sequences, exp.action_mask, attention_mask=exp.attention_mask)
            loss = -(log_probs * exp.action_mask).sum() / exp.action_mask.sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            losses.append(float(loss.detach()))
    return losses
