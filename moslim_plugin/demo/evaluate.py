"""Controllability evaluation of any policy checkpoint, judged by the oracle (never by a trained reward model).

    moslim-openrlhf evaluate --actor.model_name_or_path <policy> [--reward.model_name_or_path <moslim rm>]

For every held-out prompt the policy answers greedily (so the numbers do not depend on sampling luck), once
with a directive for each single (objective, level) pair (so every requested level is tried on the same
prompts) and once with the "no preference" directive (what the policy does by default on that prompt). Per
objective, over the responses that requested it:

- accuracy: achieved level == requested level (the oracle's level);
- mae: mean |achieved - requested| in levels;
- spearman: rank correlation between requested and achieved level (0 when the achieved level never varies);
- unrequested_kept: for responses that requested ANOTHER objective, how often this objective stayed at the level
  the policy gives the same prompt by default.

With a reward model, `rm_agreement` is how often its most likely class equals the oracle's level, per objective, on
all the responses generated here. Writes eval.json, eval.md and a requested-vs-achieved plot to --eval.output_dir.
"""

import argparse
import json
import math
from pathlib import Path

import torch

from moslim_plugin.core.directives import DEFAULT_PLACEMENT, PLACEMENTS, apply_directive
from moslim_plugin.demo.oracle import demo_spec, judge

DATA_DIR = Path(__file__).parent / "prompts"


def read_prompts(path) -> list[str]:
    path = Path(path)
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts (expected one prompt per line)")
    return prompts


def builtin_prompts(split: str) -> list[str]:
    if split not in ("train", "heldout"):
        raise ValueError(f"built-in prompt split must be 'train' or 'heldout', got {split!r}")
    return read_prompts(DATA_DIR / f"prompts_{split}.txt")


def eval_requests(spec, prompts):
    """(prompt, request) pairs: every prompt with every single (objective, level) request, then every prompt with
    no preference."""
    pairs = [(name, level) for name, levels in zip(spec.names, spec.levels) for level in range(levels)]
    requested = [(p, {name: level}) for p in prompts for name, level in pairs]
    return requested + [(p, {}) for p in prompts]


def spearman(x, y) -> float:
    """Rank correlation with average ranks for ties; 0.0 when either side is constant (no ordering to follow)."""

    def ranks(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # average the ranks of tied values
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    if len(x) < 2:
        return 0.0
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else 0.0


def controllability_metrics(spec, samples) -> dict:
    """Metrics from samples {"prompt", "request", "achieved"}; the no-preference sample of a prompt is its default."""
    default = {s["prompt"]: s["achieved"] for s in samples if not s["request"]}
    per_objective = {}
    for name in spec.names:
        levels = spec.levels[spec.index(name)]
        asked = [s for s in samples if name in s["request"]]
        other = [s for s in samples if s["request"] and name not in s["request"] and s["prompt"] in default]
        req = [s["request"][name] for s in asked]
        got = [s["achieved"][name] for s in asked]
        per_objective[name] = {
            "n": len(asked),
            "accuracy": sum(a == b for a, b in zip(req, got)) / max(len(asked), 1),
            "mae": sum(abs(a - b) for a, b in zip(req, got)) / max(len(asked), 1),
            "spearman": spearman(req, got),
            "unrequested_kept": sum(s["achieved"][name] == default[s["prompt"]][name] for s in other)
            / max(len(other), 1),
            "by_level": {
                str(level): [sum(g == k for r, g in zip(req, got) if r == level) for k in range(levels)]
                for level in range(levels)
            },
            "default_distribution": [
                sum(d[name] == k for d in default.values()) / max(len(default), 1) for k in range(levels)
            ],  # fmt: skip
        }
    summary = {
        key: sum(m[key] for m in per_objective.values()) / len(per_objective)
        for key in ("accuracy", "mae", "spearman", "unrequested_kept")
    }
    return {"objectives": per_objective, "mean": summary}


def rm_agreement(spec, scorer, samples) -> dict[str, float]:
    """Per objective: how often the reward model's most likely class is the oracle's level."""
    result = scorer.score([s["prompt"] for s in samples], [s["response"] for s in samples], [{} for _ in samples])
    predicted = result.probs.argmax(-1)
    return {
        name: sum(int(predicted[i, k]) == s["achieved"][name] for i, s in enumerate(samples)) / len(samples)
        for k, name in enumerate(spec.names)
    }


def evaluate_policy(
    model, tokenizer, prompts, spec=None, max_new_tokens=48, scorer=None, batch_size=16, desc=None,
    placement=DEFAULT_PLACEMENT,
):  # fmt: skip
    from moslim_plugin.demo.local_rl import generate

    spec = spec or demo_spec()
    pairs = eval_requests(spec, prompts)
    messages = [apply_directive(spec, request, prompt, placement=placement) for prompt, request in pairs]
    _, _, texts = generate(model, tokenizer, messages, max_new_tokens, temperature=0.0, batch_size=batch_size,
                           desc=desc or "evaluate")  # fmt: skip
    samples = [
        {"prompt": p, "request": r, "response": t, "achieved": judge(t, spec)} for (p, r), t in zip(pairs, texts)
    ]
    metrics = controllability_metrics(spec, samples)
    if scorer is not None:
        metrics["rm_agreement"] = rm_agreement(spec, scorer, samples)
    return {"metrics": metrics, "samples": samples}


def check_finite(obj, where="result"):
    """Every number in a nested result must be finite: the report must never show NaN."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise FloatingPointError(f"{where} is {obj}")


def plot_requested_vs_achieved(spec, evals: dict, path) -> str:
    """One panel per objective: mean achieved level for each requested level, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spec.names), figsize=(4.2 * len(spec.names), 3.8))
    for ax, name, levels in zip(axes, spec.names, spec.levels):
        ax.plot([0, levels - 1], [0, levels - 1], color="grey", linestyle=":", label="perfect control")
        for policy, result in evals.items():
            by_level = result["metrics"]["objectives"][name]["by_level"]
            means = [
                sum(k * c for k, c in enumerate(by_level[str(lv)])) / max(sum(by_level[str(lv)]), 1)
                for lv in range(levels)
            ]
            ax.plot(range(levels), means, marker="o", label=policy)
        ax.set_title(name)
        ax.set_xlabel("requested level")
        ax.set_ylabel("achieved level (oracle, mean)")
        ax.set_xticks(range(levels))
        ax.set_yticks(range(levels))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def metrics_table(spec, evals: dict) -> str:
    """Markdown table: one row per policy, accuracy per objective, mean accuracy / mae / spearman / kept."""
    head = ["policy", *(f"acc {n}" for n in spec.names), "mean acc", "mean MAE", "mean Spearman", "unrequested kept"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for policy, result in evals.items():
        m = result["metrics"]
        cells = [f"{m['objectives'][n]['accuracy']:.3f}" for n in spec.names]
        cells += [f"{m['mean'][k]:.3f}" for k in ("accuracy", "mae", "spearman", "unrequested_kept")]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="moslim-openrlhf evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--actor.model_name_or_path", type=str, required=True, help="policy checkpoint (HF folder)")
    p.add_argument("--reward.model_name_or_path", type=str, default=None, help="MOSLIM RM: also report agreement")
    p.add_argument("--eval.dataset", type=str, default=None, help="prompts, one per line (default: built-in)")
    p.add_argument("--eval.max_samples", type=int, default=21, help="held-out prompts (each answered per level)")
    p.add_argument("--eval.output_dir", type=str, default="runs/evaluate")
    p.add_argument("--rollout.max_new_tokens", type=int, default=48)
    p.add_argument("--rollout.micro_batch_size", type=int, default=16)
    p.add_argument("--moslim.placement", default=DEFAULT_PLACEMENT, choices=PLACEMENTS,
                   help="where the directive goes: use the placement the policy was trained with")  # fmt: skip
    return p


def main(argv=None) -> int:
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.local_rl import load_policy
    from moslim_plugin.integration import compat

    compat.install()  # the reward model path may import openrlhf.models, which needs flash-attn's helpers
    args = hierarchize(build_parser().parse_args(argv))
    spec = demo_spec()
    prompts = read_prompts(args.eval.dataset) if args.eval.dataset else builtin_prompts("heldout")
    prompts = prompts[: args.eval.max_samples]
    model, tokenizer = load_policy(args.actor.model_name_or_path)
    scorer = None
    if args.reward.model_name_or_path:
        from moslim_plugin.core.scorer import Scorer

        scorer = Scorer.from_pretrained(args.reward.model_name_or_path)
        spec.check_same(scorer.model.spec, f"reward model {args.reward.model_name_or_path}")
    result = evaluate_policy(model, tokenizer, prompts, spec, args.rollout.max_new_tokens, scorer,
                             args.rollout.micro_batch_size, placement=args.moslim.placement)  # fmt: skip
    check_finite(result["metrics"])
    out = Path(args.eval.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.actor.model_name_or_path).name
    evals = {name: result}
    (out / "eval.json").write_text(json.dumps({"policy": args.actor.model_name_or_path, **result}, indent=1))
    plot = plot_requested_vs_achieved(spec, evals, out / "requested_vs_achieved.png")
    md = [f"# Controllability of `{args.actor.model_name_or_path}`", "", metrics_table(spec, evals), ""]
    if scorer is not None:
        agreement = result["metrics"]["rm_agreement"]
        md += ["RM agreement with the oracle: " + ", ".join(f"{k} {v:.3f}" for k, v in agreement.items())]
    md += ["", f"![requested vs achieved]({Path(plot).name})", ""]
    (out / "eval.md").write_text("\n".join(md))
    print("\n".join(md[:4]))
    print(f"report: {out / 'eval.md'}  json: {out / 'eval.json'}  plot: {plot}")
    return 0
