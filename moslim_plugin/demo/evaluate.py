"""Controllability evaluation of any policy checkpoint, for any spec, judged by the oracle or by a MOSLIM RM.

    moslim-openrlhf evaluate --actor.model_name_or_path <policy> [--reward.model_name_or_path <moslim rm>]
        [--moslim.spec <spec>] [--eval.judge oracle|rm] [--moslim.style natural|tagged]

For every held-out prompt the policy answers greedily (so the numbers do not depend on sampling luck), once
with a directive for each single (objective, level) pair (so every requested level is tried on the same
prompts) and once with the "no preference" directive (what the policy does by default on that prompt); then, as
RL sees it, `--eval.n_samples_per_prompt` sampled answers per (prompt, request) at `--rollout.temperature`.
The judge gives each answer a level per objective: the oracle (exact, demo objectives only) or the reward model's
most likely class. Per objective, over the responses that requested it:

- accuracy: achieved level == requested level, with a bootstrap 95 % interval for the mean over objectives
  (prompts resampled, since answers to one prompt are not independent);
- gap: the conditional gap, P(level L | asked for L) - P(level L | asked for another level), averaged over L:
  how far the request moves the answer (0 = ignored, 1 = perfect control);
- mae: mean |achieved - requested| in levels;
- spearman: rank correlation between requested and achieved level (0 when the achieved level never varies);
- unrequested_kept (greedy): for responses that requested ANOTHER objective, how often this objective stayed at
  the level the policy gives the same prompt by default.

Joint control (`joint_metrics`, with `--eval.joint` or the demo): every prompt is also answered under every full
combination of levels (all objectives requested at once). Per objective its accuracy under the joint request, and
the exact-all rate (every requested level met), over all combinations and apart for those held out of training
(`unseen`), each with a bootstrap 95 % interval over prompts. `bootstrap_ci` also gives the paired interval of the
difference between two policies answering the same items (the same prompts resampled for both).

With the oracle as judge and a reward model given, `rm_agreement` is the accuracy and macro-F1 of the RM's most
likely class against the oracle's level. Writes eval.json, eval.md and a requested-vs-achieved plot to
--eval.output_dir.
"""

import argparse
import itertools
import json
import random
from pathlib import Path

import torch

from moslim_plugin import (
    UserError,
    add_threads_flag,
    nonnegative,
    nonnegative_int,
    positive_int,
    set_threads,
    writable,
)
from moslim_plugin.core.directives import DEFAULT_PLACEMENT, DEFAULT_STYLE, PLACEMENTS, STYLES, apply_directive
from moslim_plugin.demo.oracle import demo_spec, judge
from moslim_plugin.demo.report import check_finite, joint_table, metrics_table, plot_requested_vs_achieved

DATA_DIR = Path(__file__).parent / "prompts"


def read_prompts(path, input_key="input") -> list[str]:
    """Questions from a .txt file (one per line) or JSON/JSONL rows with an `input_key` string, .gz or not; errors
    name the file and the line or row (`read_local_prompts`, the reader of prepare-prompts)."""
    from moslim_plugin.data.datasets import read_local_prompts

    rows = read_local_prompts(str(path), input_key)
    for i, row in enumerate(rows):
        prompt = row.get(input_key)
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{path}: row {i}: expected a non-empty {input_key!r} string, got {prompt!r:.80}")
    return [row[input_key].strip() for row in rows]


def make_output_dir(path, flag: str) -> Path:
    """The output folder, made when there is something to write; `writable` has refused, before the work, a path
    that cannot be one (a file, no permission), so the work is not lost to it and a failed run leaves no folder."""
    writable(path, flag)
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def builtin_prompts(split: str) -> list[str]:
    if split not in ("train", "heldout"):
        raise ValueError(f"built-in prompt split must be 'train' or 'heldout', got {split!r}")
    return read_prompts(DATA_DIR / f"prompts_{split}.txt")


def full_requests(spec) -> list[dict[str, int]]:
    """Every full combination of levels (one level of each objective), in spec order: the joint evaluation's
    requests (12 for the demo's 3 x 2 x 2)."""
    return [dict(zip(spec.names, levels)) for levels in itertools.product(*(range(n) for n in spec.levels))]


def combination_key(request: dict[str, int]) -> str:
    return ",".join(f"{name}={level}" for name, level in request.items())


def eval_requests(spec, prompts, joint=()):
    """(prompt, request) pairs: every prompt with every single (objective, level) request, then with each `joint`
    request (full combinations), then every prompt with no preference."""
    pairs = [(name, level) for name, levels in zip(spec.names, spec.levels) for level in range(levels)]
    requested = [(p, {name: level}) for p in prompts for name, level in pairs]
    return requested + [(p, dict(r)) for p in prompts for r in joint] + [(p, {}) for p in prompts]


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
    """Metrics from samples {"prompt", "request", "achieved"}; the no-preference sample of a prompt is its default
    (without any, `unrequested_kept` is left out)."""
    default = {s["prompt"]: s["achieved"] for s in samples if not s["request"]}
    per_objective = {}
    for name in spec.names:
        levels = spec.levels[spec.index(name)]
        asked = [s for s in samples if name in s["request"]]
        req = [s["request"][name] for s in asked]
        got = [s["achieved"][name] for s in asked]
        by_level = [
            [sum(g == k for r, g in zip(req, got) if r == level) for k in range(levels)] for level in range(levels)
        ]
        per_objective[name] = {
            "n": len(asked),
            "accuracy": sum(a == b for a, b in zip(req, got)) / max(len(asked), 1),
            "gap": conditional_gap(by_level),
            "mae": sum(abs(a - b) for a, b in zip(req, got)) / max(len(asked), 1),
            "spearman": spearman(req, got),
            "by_level": {str(level): counts for level, counts in enumerate(by_level)},
        }
        if default:
            other = [s for s in samples if s["request"] and name not in s["request"] and s["prompt"] in default]
            kept = sum(s["achieved"][name] == default[s["prompt"]][name] for s in other) / max(len(other), 1)
            per_objective[name]["unrequested_kept"] = kept
            per_objective[name]["default_distribution"] = [
                sum(d[name] == k for d in default.values()) / len(default) for k in range(levels)
            ]
    keys = ("accuracy", "gap", "mae", "spearman") + (("unrequested_kept",) if default else ())
    summary = {key: sum(m[key] for m in per_objective.values()) / len(per_objective) for key in keys}
    summary["accuracy_ci95"] = accuracy_ci95(spec, samples)
    return {"objectives": per_objective, "mean": summary}


def conditional_gap(by_level) -> float:
    """Mean over levels L of P(achieved L | requested L) - P(achieved L | requested another level); `by_level[r][a]`
    counts answers that achieved a when asked for r. For two levels it is P(1 | asked 1) - P(1 | asked 0)."""
    gaps = []
    for level, counts in enumerate(by_level):
        others = [row for r, row in enumerate(by_level) if r != level and sum(row)]
        if not sum(counts) or not others:
            continue
        hit = counts[level] / sum(counts)
        gaps.append(hit - sum(row[level] for row in others) / sum(sum(row) for row in others))
    return sum(gaps) / len(gaps) if gaps else 0.0


def accuracy_ci95(spec, samples, n_boot=1000, seed=0) -> list[float]:
    """Bootstrap 95 % interval of the mean (over objectives) exact-level accuracy, resampling prompts."""
    return bootstrap_ci(prompt_cells(samples), n_boot=n_boot, seed=seed)


def objective_hits(sample) -> list[tuple[str, bool]]:
    """(objective, hit) for each objective the sample requested."""
    return [(name, sample["achieved"][name] == level) for name, level in sample["request"].items()]


def exact_all_hits(sample) -> list[tuple[str, bool]]:
    """One cell: whether every requested level was met."""
    return [("all", all(sample["achieved"][name] == level for name, level in sample["request"].items()))]


def prompt_cells(samples, hits=objective_hits) -> dict[str, dict[str, list[int]]]:
    """prompt -> cell -> [hits, n] over the samples (answers to one prompt are not independent, so a bootstrap
    resamples prompts, each with all its cells)."""
    cells = {}
    for s in samples:
        for cell, hit in hits(s):
            counts = cells.setdefault(s["prompt"], {}).setdefault(cell, [0, 0])
            counts[0] += hit
            counts[1] += 1
    return cells


def cells_mean(cells, prompts) -> float:
    """Mean over cells of each cell's pooled hit rate over `prompts` (repeats count again)."""
    totals = {}
    for p in prompts:
        for cell, (h, n) in cells[p].items():
            total = totals.setdefault(cell, [0, 0])
            total[0] += h
            total[1] += n
    rates = [h / n for h, n in totals.values() if n]
    return sum(rates) / len(rates) if rates else 0.0


def bootstrap_ci(cells, other=None, n_boot=1000, seed=0) -> list[float]:
    """Bootstrap 95 % interval of `cells_mean` over resampled prompts; with `other` (another policy's cells on the
    same prompts), of the PAIRED difference cells - other: each resample draws the same prompts for both."""
    prompts = sorted(cells)
    if other is not None and sorted(other) != prompts:
        raise ValueError("a paired bootstrap needs both policies' answers to the same prompts")
    if not prompts:
        return [0.0, 0.0]
    rng, values = random.Random(seed), []
    for _ in range(n_boot):
        pick = rng.choices(prompts, k=len(prompts))
        values.append(cells_mean(cells, pick) - (cells_mean(other, pick) if other is not None else 0.0))
    values.sort()
    return [values[int(0.025 * (n_boot - 1))], values[int(0.975 * (n_boot - 1))]]


def joint_metrics(spec, samples, unseen=()) -> dict:
    """Metrics of answers to full requests (every objective at once): per objective its accuracy under the joint
    request (with the mean's interval); the exact-all rate over all combinations, the seen and the `unseen` ones
    (held out of training), each with its bootstrap 95 % interval over prompts; and per combination its exact-all
    rate and per-objective accuracy."""
    unseen = [dict(u) for u in unseen]
    groups = {"all": samples, "seen": [s for s in samples if s["request"] not in unseen],
              "unseen": [s for s in samples if s["request"] in unseen]}  # fmt: skip
    exact_all = {}
    for group, chosen in groups.items():
        if chosen:
            cells = prompt_cells(chosen, exact_all_hits)
            exact_all[group] = {"rate": cells_mean(cells, list(cells)), "ci95": bootstrap_ci(cells), "n": len(chosen)}
    cells = prompt_cells(samples)
    objectives = {name: sum(s["achieved"][name] == s["request"][name] for s in samples) / max(len(samples), 1)
                  for name in spec.names}  # fmt: skip
    combinations = {}
    for s in samples:
        entry = combinations.setdefault(combination_key(s["request"]), {"unseen": s["request"] in unseen, "n": 0,
                                        "exact_all": 0.0, "accuracy": dict.fromkeys(spec.names, 0.0)})  # fmt: skip
        entry["n"] += 1
        entry["exact_all"] += exact_all_hits(s)[0][1]
        for name, hit in objective_hits(s):
            entry["accuracy"][name] += hit
    for entry in combinations.values():
        entry["exact_all"] /= entry["n"]
        entry["accuracy"] = {name: hits / entry["n"] for name, hits in entry["accuracy"].items()}
    return {
        "objectives": objectives,
        "mean_accuracy": cells_mean(cells, list(cells)),
        "mean_accuracy_ci95": bootstrap_ci(cells),
        "exact_all": exact_all,
        "combinations": combinations,
    }


def headline_cells(samples, joint, unseen) -> dict[str, dict]:
    """The prompt cells of each headline metric of greedy answers: single_accuracy (mean over objectives, single-
    objective requests), joint_accuracy (the same under the `joint` full requests), exact_all over every joint
    request, exact_all_seen and exact_all_unseen (`unseen` ones apart). A metric without answers is left out."""
    joint, unseen = [dict(r) for r in joint], [dict(u) for u in unseen]
    selections = {
        "single_accuracy": (lambda r: len(r) == 1 and r not in joint, objective_hits),
        "joint_accuracy": (lambda r: r in joint, objective_hits),
        "exact_all": (lambda r: r in joint, exact_all_hits),
        "exact_all_seen": (lambda r: r in joint and r not in unseen, exact_all_hits),
        "exact_all_unseen": (lambda r: r in joint and r in unseen, exact_all_hits),
    }
    cells = {metric: prompt_cells([s for s in samples if keep(s["request"])], hits)
             for metric, (keep, hits) in selections.items()}  # fmt: skip
    return {metric: c for metric, c in cells.items() if c}


def headline(samples, joint, unseen) -> dict[str, dict]:
    """metric -> {"value", "ci95"} for `headline_cells`' metrics (bootstrap 95 % over prompts)."""
    return {metric: {"value": cells_mean(c, list(c)), "ci95": bootstrap_ci(c)}
            for metric, c in headline_cells(samples, joint, unseen).items()}  # fmt: skip


def paired_differences(samples, other, joint, unseen) -> dict[str, dict]:
    """metric -> {"diff", "ci95"}: `samples` minus `other`, two policies' greedy answers to the same (prompt,
    request) items, for `headline_cells`' metrics; the interval is the paired bootstrap over prompts."""
    mine, theirs = headline_cells(samples, joint, unseen), headline_cells(other, joint, unseen)
    return {metric: {"diff": cells_mean(c, list(c)) - cells_mean(theirs[metric], list(c)),
                     "ci95": bootstrap_ci(c, theirs[metric])}
            for metric, c in mine.items()}  # fmt: skip


def rm_agreement(spec, scorer, samples) -> dict[str, dict[str, float]]:
    """Per objective, the reward model's most likely class against the oracle's level on these answers: accuracy and
    macro-F1 as train-rm computes them on its held-out rows. On a policy's answers to the held-out prompts this is a
    held-out measure on real outputs (prompts the RM never saw, no edited text)."""
    from moslim_plugin.data.rm_metrics import head_metrics

    probs = scorer.classify([s["prompt"] for s in samples], [s["response"] for s in samples])
    labels = torch.tensor([[s["achieved"][name] for name in spec.names] for s in samples])
    metrics = head_metrics(probs, labels, spec)
    return {name: {key: metrics[name][key] for key in ("accuracy", "macro_f1")} for name in spec.names}


def make_judge(spec, scorer=None):
    """`(judge_fn, name)`: judge_fn(prompts, responses) -> achieved level per objective for each response, by the
    oracle (exact; it refuses objectives it has no judge for) or by the MOSLIM RM's most likely class."""
    if scorer is None:
        judge("", spec)  # fails now, naming the objectives the oracle cannot judge, rather than after generating
        return (lambda prompts, responses: [judge(t, spec) for t in responses]), "oracle"
    spec.check_same(scorer.spec, "the judging reward model")

    def rm_judge(prompts, responses):
        predicted = scorer.score(list(prompts), list(responses), [{} for _ in responses]).probs.argmax(-1)
        return [{name: int(predicted[i, k]) for k, name in enumerate(spec.names)} for i in range(len(responses))]

    return rm_judge, "reward model"


def evaluate_policy(
    model, tokenizer, prompts, spec=None, max_new_tokens=48, scorer=None, batch_size=16, desc=None,
    placement=DEFAULT_PLACEMENT, style=DEFAULT_STYLE, judge_fn=None, n_samples=0, temperature=0.7, seed=0, joint=(),
    unseen=(),
):  # fmt: skip
    """Greedy answers to every eval request (metrics: single-objective requests; joint_metrics: the `joint` full
    requests, `unseen` reported apart; samples: all) and, with n_samples > 0, n sampled answers to every request
    but the no-preference one (sampled_metrics, sampled_joint_metrics). The judge defaults to the oracle; a scorer
    adds rm_agreement (on every greedy answer)."""
    from moslim_plugin.demo.policy import generate

    spec = spec or demo_spec()
    judge_fn = judge_fn or make_judge(spec)[0]
    desc = desc or "evaluate"

    def answer(pairs, temperature, what):
        messages = [apply_directive(spec, request, prompt, placement, style) for prompt, request in pairs]
        _, _, texts = generate(model, tokenizer, messages, max_new_tokens, temperature, batch_size=batch_size,
                               desc=f"{desc} ({what})")  # fmt: skip
        achieved = judge_fn([p for p, _ in pairs], texts)
        return [
            {"prompt": p, "request": r, "response": t, "achieved": a} for (p, r), t, a in zip(pairs, texts, achieved)
        ]

    joint = [dict(r) for r in joint]

    def metrics(samples, prefix=""):
        # The joint answers stay out of the single-objective metrics (and their unrequested_kept) and vice versa.
        single = [s for s in samples if s["request"] not in joint]
        out = {f"{prefix}metrics": controllability_metrics(spec, single)}
        if joint:
            out[f"{prefix}joint_metrics"] = joint_metrics(spec, [s for s in samples if s["request"] in joint], unseen)
        return out

    samples = answer(eval_requests(spec, prompts, joint), 0.0, "greedy")
    result = {**metrics(samples), "samples": samples}
    if n_samples > 0:
        torch.manual_seed(seed)
        pairs = [pair for pair in eval_requests(spec, prompts, joint) if pair[1] for _ in range(n_samples)]
        sampled = answer(pairs, temperature, f"{n_samples} sampled at T={temperature}")
        result.update(metrics(sampled, "sampled_"))
        result["sampled_samples"] = sampled
    if scorer is not None:
        result["metrics"]["rm_agreement"] = rm_agreement(spec, scorer, samples)
    return result


def build_parser():
    p = argparse.ArgumentParser(prog="moslim-openrlhf evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--actor.model_name_or_path", type=str, required=True, help="policy checkpoint (HF folder)")
    p.add_argument(
        "--reward.model_name_or_path",
        type=str,
        default=None,
        help="MOSLIM RM: the judge (--eval.judge rm), or with the oracle as judge, its agreement",
    )
    p.add_argument("--moslim.spec", type=str, default=None,
                   help="objective spec (default: the reward model's, else the demo's oracle objectives)")  # fmt: skip
    p.add_argument(
        "--eval.judge",
        choices=("oracle", "rm"),
        default=None,
        help="who gives the achieved levels (default: the oracle if it judges every objective)",
    )
    p.add_argument("--eval.dataset", type=str, default=None, help="prompts: .txt (one a line) or .jsonl with 'input'")
    p.add_argument("--eval.max_samples", type=positive_int, default=64, help="held-out prompts (each at every level)")
    p.add_argument(
        "--eval.n_samples_per_prompt", type=nonnegative_int, default=2, help="sampled answers per request (0: none)"
    )
    p.add_argument(
        "--eval.joint", action="store_true", help="also answer every full combination of levels (joint control)"
    )
    p.add_argument("--eval.output_dir", type=str, default="runs/evaluate")
    p.add_argument("--rollout.max_new_tokens", type=positive_int, default=48)
    p.add_argument("--rollout.temperature", type=nonnegative, default=0.7, help="for the sampled evaluation")
    p.add_argument("--rollout.micro_batch_size", type=positive_int, default=16)
    p.add_argument("--device", type=str, default="cpu", choices=["cpu", "cuda"], help="cuda: policy and RM on the GPU")
    p.add_argument("--moslim.placement", default=DEFAULT_PLACEMENT, choices=PLACEMENTS,
                   help="where the directive goes: use the placement the policy was trained with")  # fmt: skip
    p.add_argument("--moslim.style", default=DEFAULT_STYLE, choices=STYLES,
                   help="directive style: use the one the policy was trained with")  # fmt: skip
    add_threads_flag(p)
    return p


def load_judge(args):
    """(spec, judge_fn, judge name, scorer or None) from the flags: the spec is the one given, else the RM's, else
    the demo's; the judge is the oracle when it can judge every objective (unless --eval.judge rm), else the RM."""
    from moslim_plugin.core.spec import load_spec

    scorer, spec = None, load_spec(args.moslim.spec) if args.moslim.spec else None  # the file before the model
    if args.reward.model_name_or_path:
        from moslim_plugin.core.scorer import Scorer

        scorer = Scorer.from_pretrained(args.reward.model_name_or_path, device=args.device)
    spec = spec or (scorer.spec if scorer else demo_spec())
    if scorer is not None:
        spec.check_same(scorer.spec, f"reward model {args.reward.model_name_or_path}")
    choice = args.eval.judge
    if choice is None:
        try:
            judge("", spec)
            choice = "oracle"
        except ValueError:
            choice = "rm"
    if choice == "rm" and scorer is None:
        raise UserError(f"spec {spec.source} has objectives the oracle cannot judge: pass a MOSLIM reward model "
                        "(--reward.model_name_or_path) to judge them")  # fmt: skip
    judge_fn, name = make_judge(spec, scorer if choice == "rm" else None)
    return spec, judge_fn, name, scorer


def main(argv=None) -> int:
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.policy import load_policy, torch_device
    from moslim_plugin.integration import compat

    compat.install()  # the reward model path may import openrlhf.models, which needs flash-attn's helpers
    args = hierarchize(build_parser().parse_args(argv))
    set_threads(args.threads)
    torch_device(args.device)  # `--device cuda` without a GPU: a one-line error before the reward model loads
    if args.eval.n_samples_per_prompt and not args.rollout.temperature > 0:
        raise UserError(f"--rollout.temperature {args.rollout.temperature}: the sampled evaluation needs > 0 "
                        "(or --eval.n_samples_per_prompt 0)")  # fmt: skip
    writable(args.eval.output_dir, "--eval.output_dir")
    prompts = read_prompts(args.eval.dataset) if args.eval.dataset else builtin_prompts("heldout")
    prompts = prompts[: args.eval.max_samples]
    spec, judge_fn, judge_name, scorer = load_judge(args)
    if args.eval.joint and len(spec.names) < 2:
        raise UserError(f"--eval.joint: spec {spec.source} has one objective, so no request is joint")
    model, tokenizer = load_policy(args.actor.model_name_or_path, device=args.device)
    result = evaluate_policy(
        model, tokenizer, prompts, spec, args.rollout.max_new_tokens, scorer if judge_name == "oracle" else None,
        args.rollout.micro_batch_size, placement=args.moslim.placement, style=args.moslim.style, judge_fn=judge_fn,
        n_samples=args.eval.n_samples_per_prompt, temperature=args.rollout.temperature,
        joint=full_requests(spec) if args.eval.joint else (),
    )  # fmt: skip
    check_finite({k: v for k, v in result.items() if "metrics" in k})
    name = Path(args.actor.model_name_or_path).name
    evals = {name: result}
    settings = {
        "policy": args.actor.model_name_or_path,
        "judge": judge_name,
        "spec": spec.to_dict(),
        "prompts": len(prompts),
        "placement": args.moslim.placement,
        "style": args.moslim.style,
        "n_samples_per_prompt": args.eval.n_samples_per_prompt,
        "temperature": args.rollout.temperature,
    }
    out = make_output_dir(args.eval.output_dir, "--eval.output_dir")
    (out / "eval.json").write_text(json.dumps({**settings, **result}, indent=1))
    plot = plot_requested_vs_achieved(spec, evals, out / "requested_vs_achieved.png")
    md = [f"# Controllability of `{args.actor.model_name_or_path}`", "",
          f"Judged by the **{judge_name}**; {len(prompts)} prompts, greedy, plus {args.eval.n_samples_per_prompt} "
          f"sampled answers per request at T={args.rollout.temperature}; directive style `{args.moslim.style}`, "
          f"placement `{args.moslim.placement}`.", "", metrics_table(spec, evals), ""]  # fmt: skip
    if "rm_agreement" in result["metrics"]:
        agreement = result["metrics"]["rm_agreement"]
        md += [
            "RM agreement with the oracle (accuracy / macro-F1): "
            + ", ".join(f"{k} {v['accuracy']:.3f} / {v['macro_f1']:.3f}" for k, v in agreement.items())
        ]
    if "joint_metrics" in result:
        md += ["", joint_table(spec, evals)]
    md += ["", f"![requested vs achieved]({Path(plot).name})", ""]
    (out / "eval.md").write_text("\n".join(md))
    print("\n".join(md[:6]))
    print(f"report: {out / 'eval.md'}  json: {out / 'eval.json'}  plot: {plot}")
    return 0
