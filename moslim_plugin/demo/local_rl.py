"""Single-process RL on one machine: the CPU counterpart of OpenRLHF's Ray PPO path, with a KV-cached rollout loop.

Every algorithm piece is OpenRLHF's own: `openrlhf.models.Actor` wraps the policy, `compute_approx_kl` gives the KL to
the initial policy, `RemoteExperienceMaker.compute_advantages_and_returns` (called on real `Experience` objects)
applies the reward clip, the KL-shaped reward (`compute_reward`) and the advantage estimator, and `PolicyLoss` gives
the clipped surrogate. Flags have OpenRLHF's names and meanings (`--algo.advantage.estimator`,
`--rollout.n_samples_per_prompt`, `--algo.kl.init_coef`, `--actor.adam.lr`, `--reward.clip_range`, ...).

What differs, and why: rollouts come from `rollout.decode`, a KV-cached loop with HF `generate`'s sampling
semantics (no vLLM on CPU; speed in bench/bench_rollout.py) run on the trained policy itself; the policy is fp32
(bf16 backward is ~7x slower on CPU); only the top `--moslim.trainable_layers` decoder layers (or LoRA adapters in
them, --ds.lora.*) are trained, so backward stops there; and the log-probs that OpenRLHF computes in a separate
no-grad pass before training are taken from the training forward itself (detached). With `--train.max_epochs 1`
and one optimizer step per rollout batch (what this driver does) the weights are the same in both passes, so the
numbers are identical and one forward pass per step is saved.
"""

import argparse
import importlib.util
import json
import math
import os
import random
import sys
import time
import types
from pathlib import Path

import torch
from tqdm import tqdm

ESTIMATORS = ("reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo")


def import_experience_maker():
    """OpenRLHF's `RemoteExperienceMaker`, importable without vLLM.

    `openrlhf.trainer.ppo_utils.experience_maker` imports `openrlhf.trainer.ray`, whose `vllm_engine` module reads
    `vllm.SamplingParams`, `vllm.inputs.TokensPrompt` and `vllm.utils.random_uuid` at import time. This driver never
    creates a vLLM engine; it only needs the advantage code. So, for THIS local driver only and only when vLLM is
    not installed, those three names are registered for the duration of the import and removed right after, so
    nothing else in the process can mistake the stand-in for vLLM."""
    added = []
    if "vllm" not in sys.modules and importlib.util.find_spec("vllm") is None:
        vllm, inputs, utils = (types.ModuleType(n) for n in ("vllm", "vllm.inputs", "vllm.utils"))

        class _NotAvailable:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("vLLM is not installed: the local RL driver generates with HF transformers")

        vllm.SamplingParams, inputs.TokensPrompt, utils.random_uuid = _NotAvailable, dict, lambda: os.urandom(16).hex()
        vllm.inputs, vllm.utils, vllm.__version__ = inputs, utils, "0.0.0+moslim-local-shim"
        added = {"vllm": vllm, "vllm.inputs": inputs, "vllm.utils": utils}
        sys.modules.update(added)
    try:
        from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return RemoteExperienceMaker


def add_rl_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # Same names, meanings and (unless noted) defaults as openrlhf/cli/train_ppo_ray.py.
    p.add_argument("--actor.model_name_or_path", type=str, default=None, help="default: SmolLM2-135M-Instruct")
    p.add_argument("--actor.adam.lr", type=float, default=1e-6)
    p.add_argument("--actor.adam.betas", type=float, nargs=2, default=(0.9, 0.95))
    p.add_argument("--actor.adam.eps", type=float, default=1e-8)
    p.add_argument("--actor.adam.weight_decay", type=float, default=0.0)
    p.add_argument("--actor.max_norm", type=float, default=1.0)
    p.add_argument("--actor.eps_clip", type=float, default=0.2)
    p.add_argument("--actor.policy_loss_type", type=str, default="ppo", choices=["ppo", "gspo"])
    p.add_argument("--actor.entropy_coef", type=float, default=None)
    p.add_argument("--algo.advantage.estimator", type=str, default="reinforce_baseline", choices=ESTIMATORS)
    p.add_argument("--algo.advantage.gamma", type=float, default=1.0)
    p.add_argument("--algo.advantage.lambd", type=float, default=1.0)
    p.add_argument("--algo.advantage.no_std_norm", action="store_true", default=False)
    p.add_argument("--algo.kl.init_coef", type=float, default=0.01)
    p.add_argument("--algo.kl.estimator", type=str, default="k1", choices=["k1", "k2", "k3"])
    p.add_argument("--algo.kl.use_loss", action="store_true", default=False)
    p.add_argument("--algo.kl.unbiased_gradient", action="store_true", default=False)
    p.add_argument("--rollout.batch_size", type=int, default=8, help="prompts per rollout (OpenRLHF: 1024)")
    p.add_argument("--rollout.n_samples_per_prompt", type=int, default=4, help="(OpenRLHF: 1)")
    p.add_argument("--rollout.max_new_tokens", type=int, default=48, help="(OpenRLHF: 1024)")
    p.add_argument("--rollout.temperature", type=float, default=1.0)
    p.add_argument("--rollout.top_p", type=float, default=1.0)
    p.add_argument("--rollout.micro_batch_size", type=int, default=16, help="samples per forward (OpenRLHF: 1)")
    p.add_argument("--reward.clip_range", type=float, nargs=2, default=(-10, 10))
    p.add_argument("--reward.overlong_buffer_len", type=float, default=None)
    p.add_argument("--reward.overlong_penalty_factor", type=float, default=1)
    p.add_argument("--reward.stop_properly_penalty_coef", type=float, default=None)
    p.add_argument("--train.num_episodes", type=int, default=1)
    p.add_argument("--train.max_epochs", type=int, default=1)
    p.add_argument("--train.seed", type=int, default=42)
    p.add_argument("--data.max_samples", type=int, default=int(1e8), help="prompts used (steps = this / batch)")
    p.add_argument("--ckpt.output_dir", type=str, default="./ckpt")
    # Ours: CPU budget knob. The bottom layers (and the tied embeddings) stay frozen so backward stops early.
    p.add_argument("--moslim.trainable_layers", type=int, default=4, help="top decoder layers trained (-1: all)")
    # LoRA, OpenRLHF's flags (train_ppo_ray.py calls them --ds.lora.*; --actor.lora.* is accepted as an alias).
    # With LoRA on, adapters go into the --moslim.trainable_layers top layers and only they train.
    p.add_argument("--ds.lora.rank", "--actor.lora.rank", dest="ds.lora.rank", type=int, default=0)
    p.add_argument("--ds.lora.alpha", "--actor.lora.alpha", dest="ds.lora.alpha", type=int, default=16)
    p.add_argument("--ds.lora.target_modules", "--actor.lora.target_modules", dest="ds.lora.target_modules", type=str,
                   nargs="*", default="all-linear")  # fmt: skip
    p.add_argument("--ds.lora.dropout", "--actor.lora.dropout", dest="ds.lora.dropout", type=float, default=0)
    # Ours: sequences decoded together in a rollout (OpenRLHF's vLLM batches a whole rollout; here memory and the
    # 2-core CPU bound it). Decoding is memory-bound, so 32 rows per step cost about what 16 do.
    p.add_argument("--moslim.generate_batch_size", type=int, default=32, help="sequences per decode forward")
    return p


def parse_rl_args(argv) -> argparse.Namespace:
    from openrlhf.utils.config import hierarchize

    return check_rl_args(hierarchize(add_rl_args(argparse.ArgumentParser(prog="local_rl")).parse_args(argv)))


def check_rl_args(args):
    """The run-time fields OpenRLHF's experience maker reads, plus the checks train_ppo_ray.py does."""
    algo, rollout = args.algo, args.rollout
    if algo.advantage.estimator in ("rloo", "reinforce_baseline", "group_norm", "dr_grpo"):
        if rollout.n_samples_per_prompt < 2:
            raise ValueError(f"{algo.advantage.estimator} requires --rollout.n_samples_per_prompt > 1")
    if args.train.max_epochs != 1:
        raise ValueError(f"--train.max_epochs {args.train.max_epochs}: the local driver does one epoch per rollout")
    if args.actor.entropy_coef is not None:
        raise ValueError("--actor.entropy_coef: not supported locally (OpenRLHF's entropy is torch.compile'd)")
    if args.reward.clip_range[0] >= args.reward.clip_range[1]:
        raise ValueError(f"--reward.clip_range {args.reward.clip_range}: low must be < high")
    args.actor.eps_clip_low_high = (args.actor.eps_clip, args.actor.eps_clip)
    # Fields RemoteExperienceMaker reads; fixed on one process.
    for ns, fields in {
        "train": dict(colocate_all=False, colocate_actor_ref=False, colocate_critic_reward=False),
        "ds": dict(ring_attn_size=1, tensor_parallel_size=1),
        "actor": dict(num_nodes=1, num_gpus_per_node=1),
    }.items():
        if not hasattr(args, ns):
            setattr(args, ns, argparse.Namespace())
        for key, value in fields.items():
            setattr(getattr(args, ns), key, value)
    args.train.dynamic_batch_enable = False
    args.data.max_len = rollout.max_new_tokens
    return args


def load_policy(path, trainable_layers: int = -1, lora=None):
    """fp32 HF causal LM + left-padding tokenizer; freezes all but the top `trainable_layers` decoder layers.

    `lora` (OpenRLHF's `args.ds.lora`: rank, alpha, dropout, target_modules) with rank > 0 wraps the model in peft
    LoRA adapters as OpenRLHF's Actor does, placed in those top layers only (all layers for -1), and trains only the
    adapters. A LoRA checkpoint (a folder with adapter_config.json, what `save_pretrained` writes for it) loads onto
    its base model merged, so evaluation and the next stage get a plain model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moslim_plugin import UserError

    path = str(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        raise UserError(f"{path}: the tokenizer has no pad token; set one (e.g. the eos token) and save it")
    adapter = Path(path, "adapter_config.json")
    if adapter.exists():  # the base may itself be a LoRA checkpoint: merge down the chain
        from peft import PeftModel

        base, _ = load_policy(json.loads(adapter.read_text())["base_model_name_or_path"])
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
        model.name_or_path = path  # what a new adapter on this model records as its base
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
        )
    n_layers = len(model.model.layers)
    if trainable_layers > n_layers:
        raise UserError(f"--moslim.trainable_layers {trainable_layers}: the model has {n_layers} layers")
    top = range(n_layers - trainable_layers if trainable_layers >= 0 else 0, n_layers)
    if lora is not None and lora.rank > 0:
        from peft import LoraConfig, TaskType, get_peft_model

        if not top:
            raise UserError("--ds.lora.rank > 0 with --moslim.trainable_layers 0: no layer to put adapters in")
        targets = lora.target_modules
        if targets == "all-linear":  # spelled out: peft takes layers_to_transform only with a list of names
            linear = [n for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
            targets = sorted({n.rsplit(".", 1)[-1] for n in linear})
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=lora.rank, lora_alpha=lora.alpha, target_modules=list(targets),
            lora_dropout=lora.dropout, bias="none", layers_to_transform=list(top),
        )  # fmt: skip
        return get_peft_model(model, config), tokenizer  # peft freezes everything but the adapters
    if trainable_layers >= 0:
        model.requires_grad_(False)
        for i in top:
            model.model.layers[i].requires_grad_(True)
        model.model.norm.requires_grad_(True)
    return model, tokenizer


def generate(model, tokenizer, messages_list, max_new_tokens, temperature=1.0, top_p=1.0, batch_size=16, desc=None):
    """Sample one response per chat, `batch_size` sequences per forward, with the KV-cached loop of `rollout.decode`
    (HF `generate`'s temperature / top-p semantics; temperature 0 is its greedy). Identical chats (the n samples of
    one prompt) share one prefill; chats are batched by prompt length to cut left padding.
    Returns (prompt_ids list, response_ids list, texts) in the order of `messages_list`."""
    from moslim_plugin import UserError
    from moslim_plugin.demo.rollout import decode

    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError(f"temperature {temperature}, top_p {top_p}: expected temperature >= 0 and 0 < top_p <= 1")
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_list]
    where = {}  # prompt text -> the positions in messages_list that ask for it
    for i, text in enumerate(prompts):
        where.setdefault(text, []).append(i)
    encoded = {text: tokenizer(text, add_special_tokens=False).input_ids for text in where}
    order = sorted(where, key=lambda text: len(encoded[text]))
    prompt_ids, response_ids = [None] * len(prompts), [None] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc or "generate", disable=desc is False, leave=False)
    while order:
        # Whole prompts (all their copies) per batch, so each prompt is prefilled once; one prompt may exceed it.
        chunk, rows = [], 0
        while order and (not chunk or rows + len(where[order[0]]) <= batch_size):
            chunk.append(order.pop(0))
            rows += len(where[chunk[-1]])
        responses = decode(
            model, [encoded[t] for t in chunk], [len(where[t]) for t in chunk], max_new_tokens, temperature, top_p,
            tokenizer.eos_token_id, tokenizer.pad_token_id,
        )  # fmt: skip
        slots = [i for t in chunk for i in where[t]]
        for i, ids in zip(slots, responses):
            prompt_ids[i], response_ids[i] = list(encoded[prompts[i]]), ids
        bar.update(rows)
    bar.close()
    model.train(was_training)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in response_ids]
    return prompt_ids, response_ids, texts


def make_experience(prompt_ids, response_ids, pad_id, eos_id):
    """An OpenRLHF `Experience` (left-padded prompts, right-padded responses) from token id lists."""
    from openrlhf.trainer.ppo_utils.experience import Experience

    p_len, r_len = max(map(len, prompt_ids)), max(max(map(len, response_ids)), 1)
    seqs, attn, act = [], [], []
    for p, r in zip(prompt_ids, response_ids):
        seqs.append([pad_id] * (p_len - len(p)) + p + r + [pad_id] * (r_len - len(r)))
        attn.append([0] * (p_len - len(p)) + [1] * (len(p) + len(r)) + [0] * (r_len - len(r)))
        act.append([1] * len(r) + [0] * (r_len - len(r)))
    truncated = torch.tensor([not r or r[-1] != eos_id for r in response_ids])
    return Experience(
        sequences=torch.tensor(seqs),
        attention_mask=torch.tensor(attn),
        action_mask=torch.tensor(act, dtype=torch.bool),
        response_length=torch.tensor([float(len(r)) for r in response_ids]),
        truncated=truncated,
        total_length=torch.tensor([float(len(p) + len(r)) for p, r in zip(prompt_ids, response_ids)]),
        info={},
    )


def train_policy(args, rows, reward_fn, model=None, tokenizer=None, progress=True) -> dict:
    """RL on `rows` ({"messages": chat with directive, "question": str, "request": dict}); `reward_fn(questions,
    responses, requests) -> (rewards[B] fp32, info dict of [B] tensors)`. Saves the policy to --ckpt.output_dir and
    returns {"history": per-step logs, "output_dir", "seconds"}."""
    from moslim_plugin.integration import compat

    compat.install()  # before openrlhf.models: it imports flash-attn's padding helpers at module level
    from openrlhf.models import Actor, PolicyLoss
    from openrlhf.models.utils import compute_approx_kl, masked_mean
    from openrlhf.trainer.ppo_utils import FixedKLController

    RemoteExperienceMaker = import_experience_maker()

    from moslim_plugin.demo.real_models import smollm2_path

    random.seed(args.train.seed)
    torch.manual_seed(args.train.seed)
    if model is None:
        model, tokenizer = load_policy(
            args.actor.model_name_or_path or smollm2_path(), args.moslim.trainable_layers, lora=args.ds.lora
        )
    actor = Actor(model, temperature=args.rollout.temperature)
    actor.packing_samples = False
    # The reference policy is only built when the KL term is on, as in train_ppo_ray.py.
    ref = None
    if args.algo.kl.init_coef > 0:
        ref_model, _ = load_policy(args.actor.model_name_or_path or smollm2_path(), 0)
        ref = Actor(ref_model.eval(), temperature=args.rollout.temperature)
        ref.packing_samples = False
    params = [p for p in actor.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(
        params, lr=args.actor.adam.lr, betas=args.actor.adam.betas, eps=args.actor.adam.eps,
        weight_decay=args.actor.adam.weight_decay,
    )  # fmt: skip
    eps = args.actor.eps_clip
    loss_fn = PolicyLoss(clip_eps_low=eps, clip_eps_high=eps, policy_loss_type=args.actor.policy_loss_type)
    # The strategy-like object and the KL controller are all RemoteExperienceMaker needs off the Ray path.
    strategy = argparse.Namespace(args=args, ring_attn_group=None, is_rank_0=lambda: True, print=print)
    kl_ctl = FixedKLController(args.algo.kl.init_coef)
    maker = RemoteExperienceMaker(None, None, None, None, kl_ctl, strategy, tokenizer)

    rows = list(rows)[: args.data.max_samples]
    order = []
    for episode in range(args.train.num_episodes):
        order += random.Random(args.train.seed + episode).sample(range(len(rows)), len(rows))
    n, bs, mbs = args.rollout.n_samples_per_prompt, args.rollout.batch_size, args.rollout.micro_batch_size
    steps = len(order) // bs
    if steps == 0:
        raise ValueError(f"{len(rows)} prompts x {args.train.num_episodes} episodes < --rollout.batch_size {bs}")
    history, start = [], time.time()
    bar = tqdm(range(steps), desc="RL steps", disable=not progress)
    for step in bar:
        batch = [rows[i] for i in order[step * bs : (step + 1) * bs] for _ in range(n)]
        t0 = time.time()
        prompt_ids, response_ids, texts = generate(
            model, tokenizer, [r["messages"] for r in batch], args.rollout.max_new_tokens,
            args.rollout.temperature, args.rollout.top_p, batch_size=args.moslim.generate_batch_size, desc=False,
        )  # fmt: skip
        t_gen = time.time() - t0
        rewards, reward_info = reward_fn([r["question"] for r in batch], texts, [r["request"] for r in batch])
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
        if rewards.shape != (len(batch),) or not torch.isfinite(rewards).all():
            raise ValueError(f"step {step}: reward_fn must return {len(batch)} finite rewards, got {rewards!r:.200}")
        # One Experience per micro-batch, with the training forward's graph kept until the advantages exist.
        experiences, graphs = [], []
        for i in range(0, len(batch), mbs):
            exp = make_experience(prompt_ids[i : i + mbs], response_ids[i : i + mbs], tokenizer.pad_token_id,
                                  tokenizer.eos_token_id)  # fmt: skip
            exp.index = list(range(i, i + len(exp.sequences)))
            exp.rewards = rewards[i : i + mbs]
            exp.info = {"reward": exp.rewards, **{k: torch.as_tensor(v)[i : i + mbs] for k, v in reward_info.items()}}
            actor.train()
            log_probs = actor(exp.sequences, exp.action_mask, attention_mask=exp.attention_mask)
            exp.action_log_probs = log_probs.detach()
            if ref is not None:
                with torch.no_grad():
                    base = ref(exp.sequences, exp.action_mask, attention_mask=exp.attention_mask)
                kl = compute_approx_kl(exp.action_log_probs, base, kl_estimator=args.algo.kl.estimator)
                exp.base_action_log_probs = base if args.algo.kl.use_loss else None
            else:
                kl = torch.zeros_like(exp.action_log_probs)
            exp.kl = torch.zeros_like(kl) if args.algo.kl.use_loss else kl
            exp.info["kl"] = masked_mean(kl, exp.action_mask, dim=-1)
            experiences.append(exp)
            graphs.append(log_probs)
        experiences = maker.compute_advantages_and_returns(experiences)

        batch_tokens = float(sum(e.action_mask.sum() for e in experiences))
        optim.zero_grad(set_to_none=True)
        logs = {"policy_loss": 0.0, "kl_loss": 0.0}
        for exp, log_probs in zip(experiences, graphs):
            loss, clip_ratio, ppo_kl, _, _ = loss_fn(
                log_probs, exp.action_log_probs, exp.advantages, action_mask=exp.action_mask,
                batch_num_tokens=batch_tokens, global_batch_size=float(len(batch)),
            )  # fmt: skip
            logs["policy_loss"] += float(loss.detach())
            if args.algo.kl.use_loss and ref is not None:
                kl = compute_approx_kl(
                    log_probs, exp.base_action_log_probs, log_probs_old=exp.action_log_probs,
                    kl_estimator=args.algo.kl.estimator, unbiased_gradient=args.algo.kl.unbiased_gradient,
                )  # fmt: skip
                kl_loss = (kl * exp.action_mask).sum() / batch_tokens
                logs["kl_loss"] += float(kl_loss.detach())
                loss = loss + kl_loss * args.algo.kl.init_coef
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.actor.max_norm)
        optim.step()

        info = {k: torch.cat([e.info[k].float().reshape(-1) for e in experiences]) for k in experiences[0].info}
        logs.update({k: float(v.mean()) for k, v in info.items()})
        logs.update(
            step=step + 1,
            grad_norm=float(grad_norm),
            response_length=float(torch.cat([e.response_length for e in experiences]).mean()),
            truncated=float(torch.cat([e.truncated.float() for e in experiences]).mean()),
            seconds_generate=t_gen,
            seconds_step=time.time() - t0,
        )
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise FloatingPointError(f"step {step + 1}: {key} is {value}; stopping before the policy is ruined")
        history.append(logs)
        bar.set_postfix(reward=f"{logs['reward']:.3f}", kl=f"{logs['kl']:.4f}")
    bar.close()

    out = Path(args.ckpt.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    with open(out / "rl_history.json", "w") as f:
        json.dump(history, f, indent=1)
    return {"history": history, "output_dir": str(out), "seconds": time.time() - start}
