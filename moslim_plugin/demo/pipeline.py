"""The whole MOSLIM loop on one CPU machine with real small models: `make demo` (or `make demo QUICK=1`).

1. sample: SmolLM2-135M-Instruct answers the built-in training prompts under random preference directives;
   the oracle (moslim_plugin/demo/oracle.py) labels every response with its exact level per objective.
2. rm: the multi-head reward model (all-MiniLM-L6-v2 backbone) is trained on those labels with `train-rm`.
3. baselines: the starting policy, and RiC (rewards-in-context): SFT of the policy on the same samples with each
   directive RELABELLED to the levels the response actually has. RiC is the natural multi-objective baseline here:
   it needs no reward model and no RL, only the samples we already have, and it conditions on the same directive.
4. rl: MOSLIM RL (local_rl.py, OpenRLHF's algorithm code) with the reward from the trained RM through the Scorer and
   the `moslim` mapping, once per seed.
5. evaluate: every policy on the held-out prompts, judged by the ORACLE; report.md / report.json / plots.

Every number in the report comes from this run; nothing is hard-coded. The base-policy evaluation is cached in the
output folder (keyed by its settings), so a second run skips it.
"""

import argparse
import hashlib
import json
import random
import re
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from moslim_plugin.core.directives import PLACEMENTS, apply_directive
from moslim_plugin.demo.evaluate import (
    builtin_prompts,
    check_finite,
    evaluate_policy,
    metrics_table,
    plot_requested_vs_achieved,
    rm_agreement,
)
from moslim_plugin.demo.local_rl import (
    add_rl_args,
    check_rl_args,
    generate,
    load_policy,
    make_experience,
    train_policy,
)
from moslim_plugin.demo.oracle import demo_spec, judge

# name: (initial samples, RM epochs, RiC epochs, eval prompts, RL steps per seed, max_new_tokens, prompts per step)
SIZES = {
    "full": dict(samples=96, rm_epochs=8, ric_epochs=1, eval_prompts=21, rl_steps=12, max_new_tokens=40, batch=8),
    "quick": dict(samples=16, rm_epochs=1, ric_epochs=1, eval_prompts=3, rl_steps=1, max_new_tokens=8, batch=2),
}


def build_parser():
    p = argparse.ArgumentParser(prog="moslim-openrlhf demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a < 5 minute smoke run of every stage")
    p.add_argument("--out", type=str, default="runs/demo", help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="one MOSLIM RL run per seed")
    p.add_argument("--moslim.mapping", type=str, default="moslim")
    p.add_argument("--moslim.mapping_kwargs", type=str, default=None)
    p.add_argument("--moslim.rm_lr", type=float, default=3e-4, help="reward-model learning rate")
    # Measured on 24 held-out prompts (greedy, 40 tokens, address + formality requests): the starting policy hits
    # the requested level in 0.48 of answers with the directive in the system message and 0.56 with it at the end of
    # the user message, right before the answer, where a 135M model attends most.
    p.add_argument("--moslim.placement", default="user_suffix", choices=PLACEMENTS, help="where the directive goes")
    for key in ("samples", "eval_prompts", "rl_steps"):
        p.add_argument(f"--demo.{key}", type=int, default=None, help=f"override the size preset's {key}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    add_rl_args(p)
    # The demo's RL defaults, sized for 2 CPU cores (any flag can still be given on the command line).
    p.set_defaults(
        **{
            "actor.adam.lr": 2e-4,
            "algo.kl.init_coef": 0.0,
            "rollout.n_samples_per_prompt": 4,
            "rollout.micro_batch_size": 32,
            # At temperature 1 (full vocabulary) the 135M policy mostly writes word salad; the evaluation decodes
            # greedily, so rollouts at 0.7 sample the coherent answers whose style the evaluation measures.
            "rollout.temperature": 0.7,
        }
    )
    return p


def sample_stage(model, tokenizer, spec, prompts, n, max_new_tokens, seed, temperature, placement):
    """n responses to training prompts under random-subset directives, each labelled by the oracle."""
    from moslim_plugin.data.datasets import TargetSampler

    sampler = TargetSampler(spec, mode="subset", seed=seed)
    questions = [prompts[i % len(prompts)] for i in range(n)]
    requests = [sampler.sample({}, i) for i in range(n)]
    messages = [apply_directive(spec, r, q, placement=placement) for q, r in zip(questions, requests)]
    torch.manual_seed(seed)
    _, _, texts = generate(
        model, tokenizer, messages, max_new_tokens, temperature, batch_size=32, desc="sample (policy)"
    )
    return [
        {"question": q, "request": r, "response": t, "labels": judge(t, spec)}
        for q, r, t in zip(questions, requests, texts)
    ]


def augment(samples, spec, seed):
    """Two cheap edits of every sampled response, relabelled by the oracle: its first k complete sentences (every
    sentence level) and a formal, impersonal rewrite (contractions expanded, "you" replaced). More and more balanced
    rows for the reward model without generating more; the RL and the evaluation never see these edits."""
    rng = random.Random(seed)
    rows = []
    for s in samples:
        sentences = re.split(r"(?<=[.!?])\s+", s["response"])
        cut = " ".join(sentences[: rng.randint(1, max(len(sentences), 1))])
        formal = s["response"]
        for pattern, repl in _FORMAL_REWRITES:
            formal = re.sub(pattern, repl, formal, flags=re.IGNORECASE)
        rows += [{"question": s["question"], "response": t, "labels": judge(t, spec)} for t in (cut, formal)]
    return rows


_FORMAL_REWRITES = [
    (r"\b(ca)n['’]t\b", r"\1n not"), (r"\bwon['’]t\b", "will not"), (r"\b(\w+)n['’]t\b", r"\1 not"),
    (r"['’]re\b", " are"), (r"['’]ll\b", " will"), (r"['’]ve\b", " have"), (r"\bI['’]m\b", "I am"),
    (r"\b(it|that|there|here|what|who|he|she)['’]s\b", r"\1 is"), (r"\blet['’]s\b", "let us"),
    (r"\b(i|you|we|they|he|she|it)['’]d\b", r"\1 would"),
    (r"\byourself\b", "oneself"), (r"\byourselves\b", "themselves"), (r"\byours\b", "one's own"),
    (r"\byour\b", "one's"), (r"\byou\b", "one"),
]  # fmt: skip


def ric_sft(model, tokenizer, spec, samples, epochs, lr, seed, micro_batch_size, placement):
    """Rewards-in-context: maximise log p(response | directive requesting the levels it actually has)."""
    from openrlhf.models import Actor

    actor = Actor(model)
    actor.packing_samples = False
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr)
    rng = random.Random(seed)
    losses = []
    for epoch in range(epochs):
        order = rng.sample(range(len(samples)), len(samples))
        for start in tqdm(range(0, len(order), micro_batch_size), desc=f"RiC SFT epoch {epoch + 1}", leave=False):
            batch = [samples[i] for i in order[start : start + micro_batch_size]]
            chats = [apply_directive(spec, s["labels"], s["question"], placement=placement) for s in batch]
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
            prompt_ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
            response_ids = [tokenizer(s["response"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
                            for s in batch]  # fmt: skip
            exp = make_experience(prompt_ids, response_ids, tokenizer.pad_token_id, tokenizer.eos_token_id)
            actor.train()
            log_probs = actor(exp.sequences, exp.action_mask, attention_mask=exp.attention_mask)
            loss = -(log_probs * exp.action_mask).sum() / exp.action_mask.sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            losses.append(float(loss.detach()))
    return losses


def plot_training(histories: dict, path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("reward", "MOSLIM reward (RM + mapping)"), ("oracle_hit", "oracle: requested levels hit"),
            ("response_length", "response tokens")]  # fmt: skip
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, (key, title) in zip(axes, keys):
        for name, history in histories.items():
            ax.plot([h["step"] for h in history], [h[key] for h in history], marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("RL step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> int:
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.data.train_rm import train_reward_model
    from moslim_plugin.demo.real_models import minilm_path, smollm2_path
    from moslim_plugin.integration import compat

    compat.install()  # before openrlhf.models (RiC SFT and RL use its Actor)
    args = hierarchize(build_parser().parse_args(argv))
    size = dict(SIZES["quick" if args.quick else "full"])
    size.update({k: v for k, v in vars(args.demo).items() if v is not None})
    if args.threads:
        torch.set_num_threads(args.threads)
    args.rollout.max_new_tokens = size["max_new_tokens"]
    args.rollout.batch_size = size["batch"]
    args.data.max_samples = size["rl_steps"] * size["batch"]
    args = check_rl_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = demo_spec()
    policy_path = Path(args.actor.model_name_or_path or smollm2_path())
    train_prompts, heldout = builtin_prompts("train"), builtin_prompts("heldout")[: size["eval_prompts"]]
    timings, t_start = {}, time.time()
    placement = args.moslim.placement

    def evaluate(model, scorer, desc):
        return evaluate_policy(model, tokenizer, heldout, spec, args.rollout.max_new_tokens, scorer, batch_size=56,
                               desc=desc, placement=placement)  # fmt: skip

    def stage(name):
        timings[name] = time.time()
        print(f"\n== {name} ==", flush=True)

    def done(name):
        timings[name] = round(time.time() - timings[name], 1)

    # 1. sample + oracle labels
    stage("sample")
    model, tokenizer = load_policy(policy_path, args.moslim.trainable_layers)
    samples = sample_stage(model, tokenizer, spec, train_prompts, size["samples"], args.rollout.max_new_tokens, 0,
                           args.rollout.temperature, placement)  # fmt: skip
    with open(out / "samples.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    done("sample")

    # 2. reward model
    stage("rm")
    rows = [{"question": s["question"], "response": s["response"], "labels": s["labels"]} for s in samples]
    rows += augment(samples, spec, seed=0)
    rm_dir = out / "rm"
    rm_batch = 8 if args.quick else 16
    rm_result = train_reward_model(
        rows, spec, minilm_path(), rm_dir, micro_batch_size=rm_batch, batch_size=rm_batch,
        max_epochs=size["rm_epochs"], lr=args.moslim.rm_lr, eval_ratio=0.2, seed=0, max_len=192,
        lr_warmup_ratio=0.1, overwrite=True,  # the RM is retrained on every run into the same folder
    )  # fmt: skip
    scorer = Scorer.from_pretrained(rm_dir, mapping=args.moslim.mapping, mapping_kwargs=args.moslim.mapping_kwargs)
    done("rm")

    # 3. baselines: starting policy (cached) and RiC SFT
    evals, histories = {}, {}
    stage("evaluate base")
    key = hashlib.sha256(
        json.dumps([str(policy_path), heldout, args.rollout.max_new_tokens, spec.fingerprint, placement]).encode()
    ).hexdigest()[:16]
    cache = out / f"eval_base_{key}.json"
    if cache.is_file():
        evals["base"] = json.loads(cache.read_text())
        print(f"(cached: {cache})")
    else:
        evals["base"] = evaluate(model, None, "evaluate base")
        cache.write_text(json.dumps(evals["base"]))
    # RM agreement is re-measured every run: the RM is new each time.
    evals["base"]["metrics"]["rm_agreement"] = rm_agreement(spec, scorer, evals["base"]["samples"])
    done("evaluate base")

    stage("RiC SFT")
    ric_losses = ric_sft(model, tokenizer, spec, samples, size["ric_epochs"], args.actor.adam.lr, 0,
                         args.rollout.micro_batch_size, placement)  # fmt: skip
    evals["RiC SFT"] = evaluate(model, scorer, "evaluate RiC")
    del model
    done("RiC SFT")

    # 4. MOSLIM RL, one run per seed, reward = Scorer(RM, mapping) on the raw question
    for seed in args.seeds:
        stage(f"MOSLIM RL seed {seed}")
        # One objective per RL prompt, every (objective, level) pair equally often, as in the evaluation: the
        # reward is then one clean signal per sample instead of an average over objectives (k = 1 in the mapping).
        # Prompts repeat (with another request) when the run needs more than the built-in set.
        pairs = [(n, lv) for n, levels in zip(spec.names, spec.levels) for lv in range(levels)]
        order = random.Random(seed).sample(range(len(train_prompts)), len(train_prompts))
        n_rows = size["rl_steps"] * size["batch"]
        questions = [train_prompts[order[i % len(order)]] for i in range(n_rows)]
        requests = [dict([pairs[i % len(pairs)]]) for i in range(n_rows)]
        rl_rows = [
            {"question": q, "request": r, "messages": apply_directive(spec, r, q, placement=placement)}
            for q, r in zip(questions, requests)
        ]

        def reward_fn(questions, responses, requests):
            result = scorer.score(questions, responses, requests)
            # Logged only (training curves), never rewarded: the oracle's verdict on the requested levels.
            hit = [
                sum(judge(t, spec)[n] == lv for n, lv in rq.items()) / max(len(rq), 1)
                for t, rq in zip(responses, requests)
            ]
            return result.rewards, {"oracle_hit": torch.tensor(hit)}

        args.train.seed = seed
        args.ckpt.output_dir = str(out / f"policy_seed{seed}")
        rl = train_policy(args, rl_rows, reward_fn)
        histories[f"MOSLIM seed {seed}"] = rl["history"]
        model, tokenizer = load_policy(rl["output_dir"])
        evals[f"MOSLIM seed {seed}"] = evaluate(model, scorer, f"evaluate seed {seed}")
        del model
        done(f"MOSLIM RL seed {seed}")

    # 5. report
    stage("report")
    moslim_acc = [evals[f"MOSLIM seed {s}"]["metrics"]["mean"]["accuracy"] for s in args.seeds]
    acc_mean, acc_std = mean_std(moslim_acc)
    base_acc = evals["base"]["metrics"]["mean"]["accuracy"]
    ric_acc = evals["RiC SFT"]["metrics"]["mean"]["accuracy"]
    spread = max(moslim_acc) - min(moslim_acc)
    verdict = acc_mean - base_acc > max(spread, acc_std)
    summary = {
        "moslim_accuracy_per_seed": moslim_acc,
        "moslim_accuracy_mean": acc_mean,
        "moslim_accuracy_std": acc_std,
        "moslim_accuracy_spread": spread,
        "base_accuracy": base_acc,
        "ric_accuracy": ric_acc,
        "moslim_beats_base_by_more_than_spread": verdict,
        "rm_eval": rm_result["metrics"],
        "ric_sft_loss_first_last": [ric_losses[0], ric_losses[-1]],
    }
    curves = plot_training(histories, out / "training_curves.png")
    plot = plot_requested_vs_achieved(spec, evals, out / "requested_vs_achieved.png")
    done("report")
    timings["total"] = round(time.time() - t_start, 1)
    report = {
        "settings": {"size": size, "quick": args.quick, "seeds": args.seeds, "mapping": args.moslim.mapping,
                     "rl_flags": flags_of(args), "policy": str(policy_path), "heldout_prompts": len(heldout),
                     "placement": placement},
        "summary": summary,
        "timings_s": timings,
        "policies": {name: e["metrics"] for name, e in evals.items()},
        "training": histories,
    }  # fmt: skip
    check_finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "eval_samples.json").write_text(json.dumps({k: e["samples"] for k, e in evals.items()}, indent=1))
    md = report_markdown(spec, evals, summary, timings, args, size, len(heldout), plot, curves)
    (out / "report.md").write_text(md)

    print("\n" + metrics_table(spec, evals))
    print(
        f"\nMOSLIM mean exact-level accuracy {acc_mean:.3f} +- {acc_std:.3f} (seeds {args.seeds}, spread "
        f"{spread:.3f}) vs starting policy {base_acc:.3f}, RiC SFT {ric_acc:.3f}: "
        + (
            "beats the starting policy by more than the spread"
            if verdict
            else "does NOT beat the starting policy by more than the seed spread"
        )  # fmt: skip
    )
    print(f"total {timings['total']:.0f} s; stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"report: {out / 'report.md'}\njson:   {out / 'report.json'}\nplots:  {plot}\n        {curves}")
    print(f"evaluate a policy again: moslim-openrlhf evaluate --actor.model_name_or_path {args.ckpt.output_dir} "
          f"--reward.model_name_or_path {rm_dir} --moslim.placement {placement}")  # fmt: skip
    return 0


def flags_of(args) -> dict:
    keys = ["actor.adam.lr", "algo.advantage.estimator", "algo.kl.init_coef", "rollout.n_samples_per_prompt",
            "rollout.batch_size", "rollout.max_new_tokens", "rollout.temperature", "reward.clip_range",
            "moslim.trainable_layers", "data.max_samples"]  # fmt: skip
    out = {}
    for key in keys:
        value = args
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def report_markdown(spec, evals, summary, timings, args, size, n_heldout, plot, curves) -> str:
    rm = summary["rm_eval"]
    agreement = {name: e["metrics"].get("rm_agreement", {}) for name, e in evals.items()}
    lines = [
        "# MOSLIM demo report",
        "",
        f"Policy SmolLM2-135M-Instruct; reward model all-MiniLM-L6-v2 with {len(spec.names)} heads "
        f"({', '.join(f'{n}: {lv} levels' for n, lv in zip(spec.names, spec.levels))}); mapping "
        f"`{args.moslim.mapping}`; estimator `{args.algo.advantage.estimator}`; {size['rl_steps']} RL steps x "
        f"{size['batch']} prompts x {args.rollout.n_samples_per_prompt} samples per seed at temperature "
        f"{args.rollout.temperature}; seeds {args.seeds}; directive placement `{args.moslim.placement}`.",
        f"Held-out prompts: {n_heldout}, each answered greedily once per single-objective request and once with no "
        "preference; all levels judged by the oracle (`moslim_plugin/demo/oracle.py`), never by the reward model.",
        "",
        metrics_table(spec, evals),
        "",
        f"**MOSLIM mean exact-level accuracy: {summary['moslim_accuracy_mean']:.3f} +- "
        f"{summary['moslim_accuracy_std']:.3f}** (per seed "
        f"{[round(a, 3) for a in summary['moslim_accuracy_per_seed']]}, spread "
        f"{summary['moslim_accuracy_spread']:.3f}); starting policy {summary['base_accuracy']:.3f}; RiC SFT "
        f"{summary['ric_accuracy']:.3f}. Beats the starting policy by more than the seed spread: "
        f"**{'yes' if summary['moslim_beats_base_by_more_than_spread'] else 'no'}**.",
        "",
        "Baseline: RiC-style rewards-in-context SFT (the initial samples, each directive relabelled to the levels the "
        "response actually has). It uses the same samples, prompts and directive format as MOSLIM and no reward "
        "model, so it isolates what RL with the MOSLIM reward adds over supervised conditioning.",
        "",
        "## Reward model (held-out split of the initial samples)",
        "",
        "| head | " + " | ".join(sorted(next(iter(rm.values())))) + " |",
        "|" + " --- |" * (1 + len(next(iter(rm.values())))),
        *[f"| {n} | " + " | ".join(f"{m[k]:.3g}" for k in sorted(m)) + " |" for n, m in rm.items()],
        "",
        "RM agreement with the oracle on each policy's evaluation responses (argmax class == oracle level):",
        "",
        "| policy | " + " | ".join(spec.names) + " |",
        "|" + " --- |" * (1 + len(spec.names)),
        *[f"| {p} | " + " | ".join(f"{a[n]:.3f}" for n in spec.names) + " |" for p, a in agreement.items() if a],
        "",
        f"![requested vs achieved]({Path(plot).name})",
        "",
        f"![training curves]({Path(curves).name})",
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
        "",
    ]  # fmt: skip
    return "\n".join(lines)
