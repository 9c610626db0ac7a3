"""Single-process RL on one machine: the CPU counterpart of OpenRLHF's Ray PPO path, with a KV-cached rollout loop.

Every algorithm piece is OpenRLHF's own: `openrlhf.models.Actor` wraps the policy, `compute_approx_kl` and
`aggregate_loss` give the KL to the initial policy and its loss, `RemoteExperienceMaker.compute_advantages_and_returns`
(called on real `Experience` objects) applies the reward clip, the KL-shaped reward and the advantage estimator, and
`PolicyLoss` gives the clipped surrogate. Flags have OpenRLHF's names and meanings (`--algo.advantage.estimator`,
`--rollout.n_samples_per_prompt`, `--train.max_epochs`, `--train.batch_size`, `--actor.adam.lr`, ...).

What differs, and why: rollouts come from `rollout.decode`, a KV-cached loop with HF `generate`'s sampling
semantics (no vLLM on CPU; speed in bench/bench_rollout.py), run on a rollout copy of the policy that plays vLLM's
part: bf16 by default (`--moslim.rollout_dtype`; OpenRLHF's vLLM engines sample in bf16), eager attention, and the
trained weights copied in after every update, as OpenRLHF broadcasts them to vLLM. The log-probs the loss uses come
from the fp32 policy, as OpenRLHF recomputes them with its actor. The policy's weights are fp32 on both devices
(bf16 backward is ~7x slower on CPU; on `--device cuda` matmuls run in TF32: see `policy.torch_device`); only the
top `--moslim.trainable_layers` decoder layers (or LoRA adapters in them, --ds.lora.*) are trained, so backward stops
there. With one epoch and one optimizer step per rollout (the default:
`--train.max_epochs 1`, no `--train.batch_size`), the old log-probs are taken from the training forward itself
(detached): the weights are the same in both passes, so the numbers are identical and one forward pass per step is
saved.
"""

import argparse
import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from moslim_plugin import (
    Range,
    finite,
    integer,
    nonnegative,
    nonnegative_int,
    positive,
    positive_int,
    probability,
)
from moslim_plugin.demo.policy import ROLLOUT_DTYPES, generate, load_policy, rollout_copy, torch_device

ESTIMATORS = ("reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo")


def import_experience_maker():
    """OpenRLHF's `RemoteExperienceMaker`, importable without vLLM.

    `openrlhf.trainer.ppo_utils.experience_maker` imports `openrlhf.trainer.ray`, whose `vllm_engine` module reads
    three vLLM names at import time. This driver never creates a vLLM engine; it only needs the advantage code. So,
    only when vLLM is not installed, the package's stand-in (integration/vllm_stub) is on the path for the duration of
    the import and removed right after, so nothing else in the process can mistake it for vLLM."""
    from moslim_plugin.integration import vllm_stub

    missing = "vllm" not in sys.modules and importlib.util.find_spec("vllm") is None
    if missing:
        sys.path.insert(0, vllm_stub.PATH)
    try:
        from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    finally:
        if missing:
            sys.path.remove(vllm_stub.PATH)
            for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
                sys.modules.pop(name)
    return RemoteExperienceMaker


def add_rl_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # Same names, meanings and (unless noted) defaults as openrlhf/cli/train_ppo_ray.py.
    p.add_argument("--actor.model_name_or_path", type=str, default=None, help="default: SmolLM2-135M-Instruct")
    p.add_argument("--actor.adam.lr", type=positive, default=1e-6)
    p.add_argument("--actor.adam.betas", type=Range(float, 0, 1, high_open=True), nargs=2, default=(0.9, 0.95))
    p.add_argument("--actor.adam.eps", type=positive, default=1e-8)
    p.add_argument("--actor.adam.weight_decay", type=nonnegative, default=0.0)
    p.add_argument("--actor.max_norm", type=nonnegative, default=1.0, help="gradient clipping (0: none)")
    p.add_argument("--actor.eps_clip", type=positive, default=0.2)
    p.add_argument("--actor.policy_loss_type", type=str, default="ppo", choices=["ppo", "gspo"])
    p.add_argument("--actor.entropy_coef", type=finite, default=None)
    p.add_argument("--algo.advantage.estimator", type=str, default="reinforce_baseline", choices=ESTIMATORS)
    p.add_argument("--algo.advantage.gamma", type=probability, default=1.0)
    p.add_argument("--algo.advantage.lambd", type=probability, default=1.0)
    p.add_argument("--algo.advantage.no_std_norm", action="store_true", default=False)
    p.add_argument("--algo.kl.init_coef", type=nonnegative, default=0.01)
    p.add_argument("--algo.kl.estimator", type=str, default="k1", choices=["k1", "k2", "k3"])
    p.add_argument("--algo.kl.use_loss", action="store_true", default=False)
    p.add_argument("--algo.kl.unbiased_gradient", action="store_true", default=False)
    p.add_argument("--rollout.batch_size", type=positive_int, default=8, help="prompts per rollout (OpenRLHF: 1024)")
    p.add_argument("--rollout.n_samples_per_prompt", type=positive_int, default=4, help="(OpenRLHF: 1)")
    p.add_argument("--rollout.max_new_tokens", type=positive_int, default=48, help="(OpenRLHF: 1024)")
    # Sampled rollouts: at 0 (greedy) every sample of a prompt is the same answer and every advantage is 0.
    p.add_argument("--rollout.temperature", type=positive, default=1.0)
    p.add_argument("--rollout.top_p", type=Range(float, 0, 1, low_open=True), default=1.0)
    p.add_argument(
        "--rollout.micro_batch_size", type=positive_int, default=16, help="samples per forward (OpenRLHF: 1)"
    )
    p.add_argument("--reward.clip_range", type=finite, nargs=2, default=(-10, 10))
    p.add_argument("--reward.overlong_buffer_len", type=nonnegative, default=None)
    p.add_argument("--reward.overlong_penalty_factor", type=nonnegative, default=1)
    p.add_argument("--reward.stop_properly_penalty_coef", type=finite, default=None)
    p.add_argument("--train.num_episodes", type=positive_int, default=1)
    p.add_argument("--train.max_epochs", type=positive_int, default=1, help="PPO epochs over each rollout batch")
    p.add_argument(
        "--train.batch_size", type=positive_int, default=None,
        help="samples per optimizer step (OpenRLHF: 128; default: the whole rollout batch)",
    )  # fmt: skip
    p.add_argument(
        "--train.micro_batch_size", type=positive_int, default=None,
        help="samples per training forward (OpenRLHF: 1; default: --rollout.micro_batch_size)",
    )  # fmt: skip
    p.add_argument("--train.seed", type=integer, default=42)
    p.add_argument(
        "--data.max_samples", type=positive_int, default=int(1e8), help="prompts used (steps = this / batch)"
    )
    p.add_argument("--ckpt.output_dir", type=str, default="./ckpt")
    p.add_argument("--device", type=str, default="cpu", choices=["cpu", "cuda"], help="cuda: TF32 matmuls")
    # Ours: CPU budget knob. The bottom layers (and the tied embeddings) stay frozen so backward stops early.
    p.add_argument("--moslim.trainable_layers", type=Range(int, 1, special=(-1, "all")), default=4,
                   help="top decoder layers trained")  # fmt: skip
    # LoRA, OpenRLHF's flags (train_ppo_ray.py calls them --ds.lora.*; --actor.lora.* is accepted as an alias).
    # With LoRA on, adapters go into the --moslim.trainable_layers top layers and only they train.
    p.add_argument("--ds.lora.rank", "--actor.lora.rank", dest="ds.lora.rank", type=nonnegative_int, default=0)
    p.add_argument("--ds.lora.alpha", "--actor.lora.alpha", dest="ds.lora.alpha", type=positive_int, default=16)
    p.add_argument("--ds.lora.target_modules", "--actor.lora.target_modules", dest="ds.lora.target_modules", type=str,
                   nargs="*", default="all-linear")  # fmt: skip
    p.add_argument("--ds.lora.dropout", "--actor.lora.dropout", dest="ds.lora.dropout",
                   type=Range(float, 0, 1, high_open=True), default=0)  # fmt: skip
    # Ours: sequences decoded together in a rollout (OpenRLHF's vLLM batches a whole rollout; here memory and the
    # 2-core CPU bound it).
    p.add_argument("--moslim.generate_batch_size", type=positive_int, default=32, help="sequences per decode forward")
    p.add_argument(
        "--moslim.rollout_dtype", type=str, default="bf16", choices=list(ROLLOUT_DTYPES),
        help="dtype of the rollout copy that samples (OpenRLHF's vLLM: bf16; bench/bench_rollout.py)",
    )  # fmt: skip
    return p


def parse_rl_args(argv) -> argparse.Namespace:
    from openrlhf.utils.config import hierarchize

    return check_rl_args(hierarchize(add_rl_args(argparse.ArgumentParser(prog="local_rl")).parse_args(argv)))


def check_rl_args(args):
    """The run-time fields OpenRLHF's experience maker reads, plus the checks train_ppo_ray.py does."""
    from moslim_plugin import UserError

    algo, rollout, train = args.algo, args.rollout, args.train
    if algo.advantage.estimator in ("rloo", "reinforce_baseline", "group_norm", "dr_grpo"):
        if rollout.n_samples_per_prompt < 2:
            raise UserError(f"{algo.advantage.estimator} requires --rollout.n_samples_per_prompt > 1")
    if train.max_epochs < 1:
        raise UserError(f"--train.max_epochs {train.max_epochs}: expected an integer >= 1")
    train.micro_batch_size = train.micro_batch_size or rollout.micro_batch_size
    for flag, value in (("train.batch_size", train.batch_size), ("train.micro_batch_size", train.micro_batch_size)):
        if value is not None and value < 1:
            raise UserError(f"--{flag} {value}: expected an integer >= 1")
    if train.batch_size is not None and train.batch_size % train.micro_batch_size:
        raise UserError(
            f"--train.batch_size {train.batch_size} must be a multiple of --train.micro_batch_size "
            f"{train.micro_batch_size}"
        )
    if args.actor.entropy_coef is not None:
        raise UserError("--actor.entropy_coef: not supported locally (OpenRLHF's entropy is torch.compile'd)")
    if args.reward.clip_range[0] >= args.reward.clip_range[1]:
        raise UserError(f"--reward.clip_range {args.reward.clip_range}: low must be < high")
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


def train_policy(args, rows, reward_fn, model=None, tokenizer=None, progress=True, on_step=None) -> dict:
    """RL on `rows` ({"messages": chat with directive, "question": str, "request": dict}). Saves the policy to
    --ckpt.output_dir and returns {"history": per-step logs, "output_dir", "seconds"}.

    `reward_fn(questions, responses, requests) -> (rewards [N] fp32, info dict of [N] tensors)`, one reward per
    (question, response, request) triple. `on_step(step, model, tokenizer) -> dict | None`, called after each update
    with the trained policy (e.g. to evaluate it every few steps), adds what it returns to that step's logs."""
    run = setup_run(args, model, tokenizer, reward_fn)
    rows = list(rows)[: args.data.max_samples]
    order = []
    for episode in range(args.train.num_episodes):
        order += random.Random(args.train.seed + episode).sample(range(len(rows)), len(rows))
    n, bs = args.rollout.n_samples_per_prompt, args.rollout.batch_size
    steps = len(order) // bs
    if steps == 0:
        raise ValueError(f"{len(rows)} prompts x {args.train.num_episodes} episodes < --rollout.batch_size {bs}")
    history, start = [], time.time()
    bar = tqdm(range(steps), desc="RL steps", disable=not progress)
    for step in bar:
        batch = [rows[i] for i in order[step * bs : (step + 1) * bs] for _ in range(n)]
        t0 = time.time()
        experiences, graphs, logs = rollout_step(run, batch, step)
        logs.update(update_step(run, experiences, graphs))
        logs.update(step=step + 1, seconds_step=time.time() - t0)
        logs.update((on_step and on_step(step + 1, run.model, run.tokenizer)) or {})
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise FloatingPointError(f"step {step + 1}: {key} is {value}; stopping before the policy is ruined")
        history.append(logs)
        bar.set_postfix(reward=f"{logs['reward']:.3f}", kl=f"{logs['kl']:.4f}")
    bar.close()

    out = Path(args.ckpt.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run.model.save_pretrained(out, safe_serialization=True)
    run.tokenizer.save_pretrained(out)
    with open(out / "rl_history.json", "w") as f:
        json.dump(history, f, indent=1)
    return {"history": history, "output_dir": str(out), "seconds": time.time() - start}


def setup_run(args, model, tokenizer, reward_fn) -> argparse.Namespace:
    """Everything one training run holds: policy, reference, optimizer, OpenRLHF's loss and experience maker."""
    from moslim_plugin.integration import compat

    compat.install()  # before openrlhf.models: it imports flash-attn's padding helpers at module level
    from openrlhf.models import Actor, PolicyLoss
    from openrlhf.trainer.ppo_utils import FixedKLController

    from moslim_plugin.demo.real_models import smollm2_path

    device = torch_device(args.device)
    random.seed(args.train.seed)
    torch.manual_seed(args.train.seed)
    if model is None:
        model, tokenizer = load_policy(
            args.actor.model_name_or_path or smollm2_path(), args.moslim.trainable_layers, lora=args.ds.lora
        )
    model.to(device)
    rollout_model = rollout_copy(model, args.moslim.rollout_dtype)
    actor = Actor(model, temperature=args.rollout.temperature)
    actor.packing_samples = False
    # The reference policy is only built when the KL term is on, as in train_ppo_ray.py.
    ref = None
    if args.algo.kl.init_coef > 0:
        ref_model, _ = load_policy(args.actor.model_name_or_path or smollm2_path(), 0)
        ref = Actor(ref_model.to(device).eval(), temperature=args.rollout.temperature)
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
    maker = import_experience_maker()(None, None, None, None, FixedKLController(args.algo.kl.init_coef), strategy,
                                      tokenizer)  # fmt: skip
    return argparse.Namespace(
        args=args, model=model, rollout_model=rollout_model, tokenizer=tokenizer, actor=actor, ref=ref,
        params=params, optim=optim, loss_fn=loss_fn, maker=maker, reward_fn=reward_fn, device=device,
        rng=random.Random(args.train.seed),
    )  # fmt: skip


def rollout_step(run, batch, step):
    """Generate, score the rollouts and turn them into Experiences with advantages.
    Returns (experiences, graphs, logs); `graphs` holds the training forwards when one update step reuses them."""
    args, tok = run.args, run.tokenizer
    t0 = time.time()
    prompt_ids, response_ids, texts = generate(
        run.rollout_model, tok, [r["messages"] for r in batch], args.rollout.max_new_tokens,
        args.rollout.temperature, args.rollout.top_p, batch_size=args.moslim.generate_batch_size, desc=False,
    )  # fmt: skip
    t_gen = time.time() - t0
    requests = [r["request"] for r in batch]
    rewards, info = run.reward_fn([r["question"] for r in batch], texts, requests)
    rewards = torch.as_tensor(rewards, dtype=torch.float32).cpu()
    if rewards.shape != (len(requests),) or not torch.isfinite(rewards).all():
        raise ValueError(f"step {step}: reward_fn must return {len(requests)} finite rewards, got {rewards!r:.200}")
    info = {k: torch.as_tensor(v).float().cpu().reshape(-1) for k, v in info.items()}
    for key, value in info.items():
        if len(value) != len(requests):
            raise ValueError(f"step {step}: reward_fn info {key!r} has {len(value)} values, expected {len(requests)}")
    keep_graph = args.train.max_epochs == 1 and args.train.batch_size is None
    experiences, graphs = build_experiences(run, prompt_ids, response_ids, rewards, info, keep_graph)
    experiences = run.maker.compute_advantages_and_returns(experiences)
    logs = {k: float(torch.cat([e.info[k].float().reshape(-1).cpu() for e in experiences]).mean())
            for k in experiences[0].info}  # fmt: skip
    logs.update(objective_means("reward/", rewards, requests))
    logs.update(
        response_length=float(torch.cat([e.response_length for e in experiences]).mean()),
        truncated=float(torch.cat([e.truncated.float() for e in experiences]).mean()),
        seconds_generate=t_gen,
    )
    return experiences, graphs, logs


def objective_means(prefix: str, rewards: torch.Tensor, requests: list[dict]) -> dict[str, float]:
    """Mean reward of the samples whose request names each objective."""
    names = sorted({name for request in requests for name in request})
    return {prefix + n: float(rewards[[i for i, r in enumerate(requests) if n in r]].mean()) for n in names}


def build_experiences(run, prompt_ids, response_ids, rewards, info, keep_graph):
    """One Experience per training micro-batch with its old log-probs and the KL to the initial policy."""
    from openrlhf.models.utils import compute_approx_kl, masked_mean

    args, mbs = run.args, run.args.train.micro_batch_size
    experiences, graphs = [], []
    for i in range(0, len(prompt_ids), mbs):
        exp = make_experience(prompt_ids[i : i + mbs], response_ids[i : i + mbs], run.tokenizer.pad_token_id,
                              run.tokenizer.eos_token_id).to_device(run.device)  # fmt: skip
        exp.index = list(range(i, i + len(exp.sequences)))  # sample order: the experience maker groups by it
        exp.rewards = rewards[i : i + mbs].to(run.device)
        exp.info = {"reward": exp.rewards, **{k: v[i : i + mbs].to(run.device) for k, v in info.items()}}
        run.actor.train()
        with torch.set_grad_enabled(keep_graph):
            log_probs = run.actor(exp.sequences, exp.action_mask, attention_mask=exp.attention_mask)
        exp.action_log_probs = log_probs.detach()
        kl = torch.zeros_like(exp.action_log_probs)
        if run.ref is not None:
            with torch.no_grad():
                base = run.ref(exp.sequences, exp.action_mask, attention_mask=exp.attention_mask)
            kl = compute_approx_kl(exp.action_log_probs, base, kl_estimator=args.algo.kl.estimator)
            exp.base_action_log_probs = base if args.algo.kl.use_loss else None
        exp.kl = torch.zeros_like(kl) if args.algo.kl.use_loss else kl
        exp.info["kl"] = masked_mean(kl, exp.action_mask, dim=-1)
        experiences.append(exp)
        graphs.append(log_probs if keep_graph else None)
    return experiences, graphs


def update_step(run, experiences, graphs) -> dict:
    """--train.max_epochs passes over the Experiences, one optimizer step per --train.batch_size samples (default:
    all), with OpenRLHF's PolicyLoss and KL loss normalised over each step's tokens, as its Ray actor does."""
    from openrlhf.models.loss import aggregate_loss
    from openrlhf.models.utils import compute_approx_kl

    args = run.args
    per_step = args.train.batch_size or sum(len(e.sequences) for e in experiences)
    logs, updates = {"policy_loss": 0.0, "kl_loss": 0.0, "ppo_clip_ratio": 0.0}, 0
    order = list(range(len(experiences)))
    for _ in range(args.train.max_epochs):
        if args.train.batch_size is not None:
            run.rng.shuffle(order)
        chunks, current = [], []
        for k in order:
            current.append(k)
            if sum(len(experiences[j].sequences) for j in current) >= per_step:
                chunks, current = chunks + [current], []
        for chunk in chunks + ([current] if current else []):
            tokens = float(sum(experiences[k].action_mask.sum() for k in chunk))
            samples = float(sum(len(experiences[k].sequences) for k in chunk))
            run.optim.zero_grad(set_to_none=True)
            for k in chunk:
                exp, log_probs = experiences[k], graphs[k]
                graphs[k] = None  # a saved forward is only valid before the first optimizer step
                if log_probs is None:
                    run.actor.train()
                    log_probs = run.actor(exp.sequences, exp.action_mask, attention_mask=exp.attention_mask)
                loss, clip_ratio, _, _, _ = run.loss_fn(
                    log_probs, exp.action_log_probs, exp.advantages, action_mask=exp.action_mask,
                    batch_num_tokens=tokens, global_batch_size=samples,
                )  # fmt: skip
                logs["policy_loss"] += float(loss.detach())
                logs["ppo_clip_ratio"] += float(clip_ratio) * len(exp.sequences) / samples
                if args.algo.kl.use_loss and exp.base_action_log_probs is not None:
                    kl = compute_approx_kl(
                        log_probs, exp.base_action_log_probs, log_probs_old=exp.action_log_probs,
                        kl_estimator=args.algo.kl.estimator, unbiased_gradient=args.algo.kl.unbiased_gradient,
                    )  # fmt: skip
                    kl_loss = aggregate_loss(kl, exp.action_mask, batch_num_tokens=tokens, global_batch_size=samples)
                    logs["kl_loss"] += float(kl_loss.detach())
                    loss = loss + kl_loss * args.algo.kl.init_coef
                loss.backward()
            # 0 turns clipping off, as in OpenRLHF (DeepSpeed's gradient_clipping 0), rather than zeroing gradients.
            grad_norm = torch.nn.utils.clip_grad_norm_(run.params, args.actor.max_norm or float("inf"))
            run.optim.step()
            updates += 1
    with torch.no_grad():  # the new weights to the rollout copy, as OpenRLHF broadcasts them to vLLM
        for rollout_param, param in zip(run.rollout_model.parameters(), run.model.parameters(), strict=True):
            if param.requires_grad:
                rollout_param.copy_(param)
    logs = {k: v / updates for k, v in logs.items()}
    logs.update(grad_norm=float(grad_norm), optimizer_steps=updates)
    return logs
