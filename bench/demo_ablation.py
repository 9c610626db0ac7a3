"""A fair ablation of the demo: settings x seeds on one finished demo run.

    python -m moslim_plugin demo --out runs/demo --seeds 1 2 3
    python -m bench.demo_ablation --demo_dir runs/demo --seeds 1 2 3

Every setting reuses the demo run's samples, reward model and settings (sizes, directive style and placement,
max_new_tokens, temperature, RL flags: all read from its report.json), so all are measured on the same held-out
prompts, by the same oracle, with the same budget:

- base_tagged / base_natural: the starting policy with tagged / natural directives (evaluation only). Greedy
  decoding is deterministic and the sampled evaluation uses the demo's fixed sampling seed (as for every policy),
  so these are evaluated once, not per seed;
- ric: RiC SFT on the demo's samples: the drawn ones are as many as MOSLIM's rollouts (refused otherwise), and a
  top-up of the rare levels (`--demo.top_up`) comes with them, as it does to the reward model. Its epochs and lr are
  picked by a grid: each trial trains on the samples whose question is not held back and is scored (oracle,
  greedy, the evaluation's requests) on `--ric.val_prompts` held-back train prompts; the chosen one is retrained
  on all samples once per seed (the seed orders the samples);
- moslim: MOSLIM RL with the demo's flags and one PPO epoch (on-policy);
  moslim_best: the demo's flags plus `--best_flags` (the best RL setting found so far), e.g.
  `--best_flags="--moslim.trainable_layers -1"` (with `=`: a lone flag without a value would otherwise read as one
  of this script's options);
- mapping_expected_level / mapping_target_logprob: the demo's flags with another built-in mapping (the reward from
  the same RM, the same requests and RL budget): which mapping trains control best;
- long: the demo's flags plus `--long_flags` (default: 4x the RL steps, evaluated every 6 steps on the first 32
  held-out prompts: the learning curve), run for the seeds given (one is enough).

Every cell keeps its joint evaluation (the 12 full combinations, seen and unseen), its headline metrics with
intervals, and its paired differences (bootstrap over prompts, same items) against the starting policy and, for a
MOSLIM setting, against the demo's own MOSLIM run of the same seed.

Cells the demo measured with identical settings (the starting policy in the demo's style; MOSLIM seed s of any
MOSLIM setting whose flags are the demo's, e.g. `moslim_best` when the demo already runs the best flags) are taken
from its report.json, not re-run. Resumable: the JSON is rewritten after every cell and a rerun skips the
finished ones; a rerun whose inputs differ (another demo run, other flags or grid) is refused. Writes
`--out` (JSON), the same name with .md (a table for the README, with the commands) and .png. Not a `make bench`
script (no `main`): it trains many policies.
"""

import argparse
import hashlib
import itertools
import json
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench import RESULTS_DIR, figure, machine_info
from moslim_plugin import UserError
from moslim_plugin.demo.metrics import METRIC_NAMES

SETTINGS = {
    "base_tagged": "starting policy, tagged directive",
    "base_natural": "starting policy, natural directive",
    "ric": "RiC SFT (epochs, lr tuned on held-back train prompts)",
    "moslim": "MOSLIM RL, on-policy",
    "moslim_best": "MOSLIM RL, the best setting found (--best_flags)",
    "mapping_expected_level": "MOSLIM RL, the demo's flags, `expected_level` mapping",
    "mapping_target_logprob": "MOSLIM RL, the demo's flags, `target_logprob` mapping",
    "long": "MOSLIM RL, the demo's flags plus --long_flags (more steps, a learning curve)",
}
SEEDLESS = "all"  # the cell key of a setting evaluated once (the starting policy)
# The bar a MOSLIM setting is held to (`target_verdicts`): mean accuracy >= TARGET, worst seed >= MARGIN above the
# starting policy and RiC with the intervals apart.
MARGIN, TARGET = 0.05, 0.85
CONTROL_METRICS = ("single_accuracy", "exact_all_unseen")  # the joint-request targets, judged by `mapping_verdict`


def build_parser():
    p = argparse.ArgumentParser(prog="demo_ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo_dir", default="runs/demo", help="a finished demo run (samples.jsonl, rm/, report.json)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--settings", nargs="+", default=[n for n in SETTINGS if n != "long"], choices=list(SETTINGS),
                   help="default: all but long (ask for it, with one seed: 4x the RL steps)")  # fmt: skip
    p.add_argument("--out", default=str(RESULTS_DIR / "demo_ablation.json"))
    p.add_argument("--best_flags", default="--train.max_epochs 2")
    p.add_argument("--long_flags", default="--demo.rl_steps 48 --demo.curve_every 6 --demo.curve_prompts 32")
    p.add_argument("--ric.epochs", dest="ric_epochs", type=int, nargs="+", default=[1, 2], help="RiC grid: epochs")
    p.add_argument("--ric.lrs", dest="ric_lrs", type=float, nargs="+", default=[5e-5, 2e-4], help="RiC grid: lr")
    p.add_argument("--ric.val_prompts", dest="ric_val_prompts", type=int, default=16,
                   help="train prompts held back to score the RiC grid")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def demo_args(report, out, extra_flags=()):
    """The demo's flags as its report.json records them (sizes, style, placement, policy, mapping, RL flags), then
    `extra_flags` (the last occurrence of a flag wins), writing to `out`."""
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.pipeline import build_parser as demo_parser

    s = report["settings"]
    argv = ["--out", str(out), "--demo.size", s["preset"], "--device", s["device"], "--moslim.mapping", s["mapping"],
            "--moslim.style", s["style"], "--moslim.placement", s["placement"],
            "--actor.model_name_or_path", s["policy"]]  # fmt: skip
    argv += [x for k, v in s["size"].items() for x in (f"--demo.{k}", str(v))]
    for key, value in s["rl_flags"].items():
        if value is not None:
            argv += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return hierarchize(demo_parser().parse_args([*argv, *extra_flags]))


def demo_command(report, demo_dir) -> str:
    """The command that made the demo run: its non-default sizes and flags, as report.json records them."""
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.pipeline import SIZES
    from moslim_plugin.demo.pipeline import build_parser as demo_parser
    from moslim_plugin.demo.real_models import smollm2_path
    from moslim_plugin.demo.report import flags_of

    s = report["settings"]
    default = hierarchize(demo_parser().parse_args([]))
    words = ["python -m moslim_plugin demo --out", str(demo_dir), "--seeds", *map(str, s["seeds"])]
    words += [f"--demo.size {s['preset']}"] if s["preset"] != "full" else []
    words += [f"--demo.{k} {v}" for k, v in s["size"].items() if SIZES[s["preset"]].get(k) != v]
    for flag, value, default_value in [("device", s["device"], default.device),
                                       ("moslim.style", s["style"], default.moslim.style),
                                       ("moslim.placement", s["placement"], default.moslim.placement),
                                       ("moslim.mapping", s["mapping"], default.moslim.mapping),
                                       ("actor.model_name_or_path", s["policy"], str(smollm2_path()))]:  # fmt: skip
        words += [f"--{flag} {value}"] if value != default_value else []
    sized = ("rollout.batch_size", "rollout.max_new_tokens", "data.max_samples")  # set from the sizes
    defaults = flags_of(default)
    for key, value in s["rl_flags"].items():
        if key not in sized and value != defaults.get(key) and value is not None:
            words.append(f"--{key} " + " ".join(map(str, value if isinstance(value, list) else [value])))
    return " ".join(words)


def cell(ctx, name, seed, result, samples, wall_s, source, **extra) -> dict:
    """One (setting, seed) measurement: the evaluation's metrics, its headline metrics with intervals, and its
    paired differences (same prompts and requests) against the starting policy and, for a MOSLIM setting, the demo's
    RiC policy and its MOSLIM run of the same seed."""
    from moslim_plugin.demo.metrics import headline, paired_differences

    demo, ref = ctx.demos[name], ctx.eval_samples
    against = {"starting policy": ref["base"]}
    if seed is not None and not name.startswith(("base_", "ric")):
        against.update({"RiC": ref["RiC SFT"]} if "RiC SFT" in ref else {})
        if f"MOSLIM seed {seed}" in ref:
            against["demo MOSLIM, same seed"] = ref[f"MOSLIM seed {seed}"]
    paired = {k: paired_differences(samples, other, demo.joint, demo.unseen) for k, other in against.items()}
    return {"source": source, "wall_s": round(wall_s, 1), "metrics": result["metrics"],
            "sampled_metrics": result.get("sampled_metrics"), "joint_metrics": result.get("joint_metrics"),
            "headline": headline(samples, demo.joint, demo.unseen), "paired": paired, **extra}  # fmt: skip


def ric_grid(ctx, results, save) -> dict:
    """Try every (epochs, lr) on the samples of the non-held-back questions, score each on the held-back ones
    (oracle, greedy, the evaluation's requests); pick the best validation accuracy (the first in grid order on a
    tie)."""
    from moslim_plugin.demo.evaluate import evaluate_policy
    from moslim_plugin.demo.policy import load_policy
    from moslim_plugin.demo.ric import ric_sft

    demo, samples, a = ctx.demos["ric"], ctx.samples, ctx.a
    questions = sorted({s["question"] for s in samples})  # more than --ric.val_prompts: checked in main_run
    val = sorted(random.Random(0).sample(questions, a.ric_val_prompts))
    train = [s for s in samples if s["question"] not in set(val)]
    grid = results.setdefault("ric_grid", {"val_prompts": val, "train_samples": len(train), "trials": {}})
    points = list(itertools.product(a.ric_epochs, a.ric_lrs))
    for epochs, lr in tqdm(points, desc="RiC grid", leave=False):
        key = f"epochs={epochs} lr={lr:g}"
        if key in grid["trials"]:
            print(f"skip RiC trial {key}: done in {ctx.out}")
            continue
        t0 = time.time()
        model, tokenizer = load_policy(demo.policy_path, demo.args.moslim.trainable_layers, device=demo.args.device)
        losses = ric_sft(model, tokenizer, demo, train, epochs, seed=0, lr=lr)
        m = evaluate_policy(
            model, tokenizer, val, demo.spec, demo.args.rollout.max_new_tokens, desc=f"RiC trial {key}",
            batch_size=max(56, demo.args.moslim.generate_batch_size), placement=demo.placement, style=demo.style,
        )["metrics"]  # fmt: skip
        grid["trials"][key] = {
            "epochs": epochs, "lr": lr, "val_accuracy": m["mean"]["accuracy"],
            "val_accuracy_ci95": m["mean"]["accuracy_ci95"], "val_gap": m["mean"]["gap"],
            "loss_first_last": [losses[0], losses[-1]], "wall_s": round(time.time() - t0, 1),
        }  # fmt: skip
        save()
    keys = [f"epochs={e} lr={lr:g}" for e, lr in points]
    grid["chosen"] = max(keys, key=lambda k: grid["trials"][k]["val_accuracy"])  # max keeps the first on a tie
    save()
    return grid["trials"][grid["chosen"]]


def run_cell(ctx, name, seed) -> dict:
    """Train (if the setting trains) and evaluate one (setting, seed) cell on the held-out prompts."""
    from moslim_plugin.demo.pipeline import rl_stage
    from moslim_plugin.demo.policy import load_policy
    from moslim_plugin.demo.ric import ric_sft

    demo, t0 = ctx.demos[name], time.time()
    if name.startswith("base_"):
        model, tokenizer = load_policy(demo.policy_path, device=demo.args.device)
        result = demo.evaluate(model, tokenizer, ctx.scorers[name], f"evaluate {name}")
        return cell(ctx, name, seed, result, result["samples"], time.time() - t0, "run")
    if name == "ric":
        chosen = ctx.ric_chosen
        model, tokenizer = load_policy(demo.policy_path, demo.args.moslim.trainable_layers, device=demo.args.device)
        losses = ric_sft(model, tokenizer, demo, demo.seen(ctx.samples), chosen["epochs"], seed=seed, lr=chosen["lr"])
        result = demo.evaluate(model, tokenizer, ctx.scorers[name], f"evaluate ric seed {seed}")
        return cell(ctx, name, seed, result, result["samples"], time.time() - t0, "run", epochs=chosen["epochs"],
                    lr=chosen["lr"], loss_first_last=[losses[0], losses[-1]])  # fmt: skip
    history, result = rl_stage(demo, ctx.scorers[name], seed, {"samples": ctx.eval_samples["base"]})
    steps = [h for h in history if "reward" in h]
    return cell(ctx, name, seed, result, result["samples"], time.time() - t0, "run", history=history,
                reward_first_last=[steps[0]["reward"], steps[-1]["reward"]],
                oracle_hit_first_last=[steps[0]["oracle_hit"], steps[-1]["oracle_hit"]])  # fmt: skip


def reused_cell(ctx, name, seed):
    """The demo report's measurement of this cell when the demo ran it with identical settings, else None."""
    from moslim_plugin.demo.report import flags_of

    report, style = ctx.report, ctx.report["settings"]["style"]
    if name == f"base_{style}":
        policy, timing = "base", "evaluate base"
    elif name.startswith(("moslim", "mapping", "long")) and seed in report["settings"]["seeds"]:
        demo = ctx.demos[name]
        flags, recorded = flags_of(demo.args), report["settings"]["rl_flags"]
        if any(flags[key] != value for key, value in recorded.items()) or demo.args.moslim.mapping != report[
                "settings"]["mapping"] or demo.size != report["settings"]["size"]:  # fmt: skip
            return None  # other flags, mapping or sizes: measured again
        # A report written before a flag was recorded ran it at its default, which demo_args gives it here too; the
        # source column names such flags.
        assumed = sorted(set(flags) - set(recorded))
        policy, timing = f"MOSLIM seed {seed}", f"MOSLIM RL seed {seed}"
    else:
        return None
    result = {"metrics": report["policies"][policy], "sampled_metrics": report["policies_sampled"].get(policy),
              "joint_metrics": report["policies_joint"][policy]}  # fmt: skip
    source = f"demo report ({policy!r})" + (
        f", defaults assumed for {assumed}" if not name.startswith("base_") and assumed else ""
    )
    return cell(ctx, name, seed, result, ctx.eval_samples[policy], report["timings_s"].get(timing, 0.0), source)


def summarize(cells: dict, style: str) -> dict:
    """Per setting: per seed the greedy accuracy with its 95 % interval, sampled accuracy and per-objective
    conditional gap; over seeds the mean, std and worst seed; then the target's verdict for every MOSLIM setting."""
    out = {}
    for name, by_seed in cells.items():
        per_seed = {seed: {
            "accuracy": c["metrics"]["mean"]["accuracy"], "accuracy_ci95": c["metrics"]["mean"]["accuracy_ci95"],
            "sampled_accuracy": c["sampled_metrics"]["mean"]["accuracy"] if c["sampled_metrics"] else None,
            "gap": {n: o["gap"] for n, o in c["metrics"]["objectives"].items()},
            "sampled_gap": {n: o["gap"] for n, o in (c["sampled_metrics"] or {}).get("objectives", {}).items()},
        } for seed, c in by_seed.items()}  # fmt: skip
        acc = {seed: p["accuracy"] for seed, p in per_seed.items()}
        worst = min(acc, key=acc.get)
        sampled = [p for p in per_seed.values() if p["sampled_accuracy"] is not None]
        out[name] = {
            "per_seed": per_seed, "seeds": list(by_seed), "accuracy_mean": statistics.mean(acc.values()),
            "accuracy_std": statistics.stdev(acc.values()) if len(acc) > 1 else 0.0,
            "worst_seed": worst, "worst_accuracy": acc[worst], "worst_accuracy_ci95": per_seed[worst]["accuracy_ci95"],
            "sampled_accuracy_mean": statistics.mean(p["sampled_accuracy"] for p in sampled) if sampled else None,
            "gap": {n: statistics.mean(p["gap"][n] for p in per_seed.values()) for n in per_seed[worst]["gap"]},
            "sampled_gap": {n: statistics.mean(p["sampled_gap"][n] for p in sampled)
                            for n in (sampled[0]["sampled_gap"] if sampled else [])},
            # Joint control: the headline metrics' mean over seeds, and each seed's paired differences.
            "headline_mean": {m: statistics.mean(c["headline"][m]["value"] for c in by_seed.values())
                              for m in next(iter(by_seed.values()))["headline"]},
            "paired": {seed: c["paired"] for seed, c in by_seed.items()},
        }  # fmt: skip
    return {"settings": out, "target": target_verdicts(cells, out, style)}


def target_verdicts(cells, summary, style) -> dict:
    """Met when the MOSLIM setting's mean accuracy >= 0.85 AND its worst seed beats the starting policy (same
    style) and the best RiC seed by >= 0.05 with the 95 % intervals apart (worst seed's low end above their high)."""
    base, verdicts = f"base_{style}", {}
    for name in [n for n in summary if n.startswith("moslim")]:
        if base not in cells or "ric" not in cells:
            verdicts[name] = {"met": None, "why": f"needs the {base} and ric cells"}
            continue
        s = summary[name]
        low = s["worst_accuracy_ci95"][0]
        rivals = {"starting policy": list(cells[base].values()), "RiC": list(cells["ric"].values())}
        beats = {}
        for rival, rival_cells in rivals.items():
            best = max(rival_cells, key=lambda c: c["metrics"]["mean"]["accuracy"])["metrics"]["mean"]
            margin = s["worst_accuracy"] - best["accuracy"]
            apart = low > max(c["metrics"]["mean"]["accuracy_ci95"][1] for c in rival_cells)
            beats[rival] = {"margin": margin, "intervals_apart": apart, "met": margin >= MARGIN and apart}
        met = s["accuracy_mean"] >= TARGET and all(b["met"] for b in beats.values())
        verdicts[name] = {"met": met, "accuracy_mean": s["accuracy_mean"], "beats": beats}
    return verdicts


def mapping_verdict(cells: dict, default: str) -> dict | None:
    """Which built-in mapping trains control best, judged on the two target metrics over seeds. Another mapping
    replaces the demo's only when every one of its seeds is above every seed of the demo's mapping on one metric and
    its mean is not lower on the other: with 3 seeds each, complete separation is the one-sided permutation test at
    p = 0.05 per metric (1 of the 20 equally likely splits of 6 seeds). None until a mapping_* setting sits beside the
    demo's."""
    arms = {}  # mapping -> its cells by seed
    for name, by_seed in cells.items():
        if name == "moslim_best" or name.startswith("mapping_"):
            arms[next(iter(by_seed.values()))["mapping"]] = by_seed
    if default not in arms or len(arms) < 2:
        return None
    flags = {json.dumps(c["rl_flags"], sort_keys=True) for by_seed in arms.values() for c in by_seed.values()}
    seeds = {tuple(sorted(by_seed)) for by_seed in arms.values()}
    if len(flags) > 1 or len(seeds) > 1:  # e.g. moslim_best run with other --best_flags: not the same RL budget
        raise UserError(f"the mappings {sorted(arms)} were trained with different RL flags or seeds ({len(flags)} "
                        f"flag sets, seeds {sorted(seeds)}): rerun them with the same ones")  # fmt: skip
    values = {mapping: {m: [c["headline"][m]["value"] for c in by_seed.values()] for m in CONTROL_METRICS}
              for mapping, by_seed in arms.items()}  # fmt: skip
    mean = {mapping: {m: statistics.mean(v) for m, v in per.items()} for mapping, per in values.items()}
    ref = values[default]
    apart = {mapping: {m: min(per[m]) > max(ref[m]) for m in CONTROL_METRICS}
             for mapping, per in values.items() if mapping != default}  # fmt: skip
    wins = [mapping for mapping, a in apart.items()
            if any(a.values()) and all(mean[mapping][m] >= mean[default][m] for m in CONTROL_METRICS)]  # fmt: skip
    best = max(wins, key=lambda mapping: mean[mapping]["exact_all_unseen"]) if wins else default
    return {"default": default, "best": best, "seeds": list(seeds.pop()), "metrics": list(CONTROL_METRICS),
            "mean": mean, "per_seed": values, "seeds_apart_above_default": apart}  # fmt: skip


def verdict_text(v: dict) -> str:
    """`mapping_verdict` in a sentence, for this script's table and the docs."""
    means = "; ".join(f"`{mapping}` " + " / ".join(f"{mean[m]:.3f}" for m in v["metrics"])
                      for mapping, mean in v["mean"].items())  # fmt: skip
    above = [f"`{mapping}` on {METRIC_NAMES[m]}" for mapping, a in v["seeds_apart_above_default"].items()
             for m, up in a.items() if up]  # fmt: skip
    if v["best"] == v["default"]:
        verdict = f"**`{v['default']}` stays the demo's mapping**: no other mapping was measured better by that rule"
    else:
        verdict = f"**`{v['best']}` trains control best**, and the demo's default should follow it"
    return (f"Mean over seeds {', '.join(v['seeds'])} ({' / '.join(METRIC_NAMES[m] for m in v['metrics'])}): "
            f"{means}. Every seed above every seed of the demo's `{v['default']}`: {', '.join(above) or 'none'}. "
            f"{verdict} (another mapping replaces it only when all its seeds are above all of the demo mapping's on "
            "one metric, the one-sided permutation test at p = 0.05 with 3 seeds each, and its mean is not lower on "
            "the other).")  # fmt: skip


def plot(cells, path) -> None:
    """Greedy and sampled accuracy per setting: one point per seed with its 95 % interval, a bar at the mean."""
    names = list(cells)
    seeds = sorted({s for c in cells.values() for s in c if s != SEEDLESS}, key=int)
    with figure(path, 1, 2, figsize=(11, 4), sharey=True) as (fig, axes):
        for ax, key in zip(axes, ("metrics", "sampled_metrics")):
            labelled = set()
            for i, name in enumerate(names):
                points = [(seed, c[key]["mean"]) for seed, c in cells[name].items() if c[key]]
                for j, (seed, m) in enumerate(points):
                    x = i + (j - (len(points) - 1) / 2) * 0.12
                    lo, hi = m["accuracy_ci95"]
                    label = "evaluated once" if seed == SEEDLESS else f"seed {seed}"
                    color = "grey" if seed == SEEDLESS else f"C{seeds.index(seed)}"
                    ax.errorbar([x], [m["accuracy"]], yerr=[[m["accuracy"] - lo], [hi - m["accuracy"]]], fmt="o",
                                capsize=3, color=color, label=None if label in labelled else label)  # fmt: skip
                    labelled.add(label)
                if points:
                    ax.hlines(statistics.mean(m["accuracy"] for _, m in points), i - 0.3, i + 0.3, color="black")
            if not labelled:  # e.g. a demo run with --demo.eval_samples 0: say so rather than leave a blank panel
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="grey")
            ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
            ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
            ax.set_title(("greedy" if key == "metrics" else "sampled") + " exact-level accuracy (95 % CI; bar: mean)")
        axes[0].legend(fontsize=7)


def markdown(results, summary, png) -> str:
    """The table for docs/results.md: one row per setting, their joint control, the RiC grid, the target's verdict
    and the commands."""
    from moslim_plugin.demo.report import paired_text

    rows = summary["settings"]
    objectives = list(next(iter(rows.values()))["gap"]) if rows else []
    head = ["setting", "what", "seeds", "greedy acc mean", "worst seed [95 % CI]", "sampled acc mean",
            *(f"gap {n}" for n in objectives), "s per cell", "source"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, s in rows.items():
        cells = results["cells"][name]
        lo, hi = s["worst_accuracy_ci95"]
        sampled = "-" if s["sampled_accuracy_mean"] is None else f"{s['sampled_accuracy_mean']:.3f}"
        worst = "evaluated once" if s["worst_seed"] == SEEDLESS else f"seed {s['worst_seed']}"
        sources = sorted({"demo" if c["source"].startswith("demo") else "run" for c in cells.values()})
        lines.append(
            f"| {name} | {SETTINGS[name]} | {', '.join(s['seeds'])} | {s['accuracy_mean']:.3f} | "
            f"{s['worst_accuracy']:.3f} ({worst}) [{lo:.3f}, {hi:.3f}] | {sampled} | "
            + " | ".join(f"{s['gap'][n]:.3f}" for n in objectives)
            + f" | {statistics.mean(c['wall_s'] for c in cells.values()):.0f} | {' + '.join(sources)} |"
        )
    lines += ["", "Joint control (greedy; paired differences: bootstrap 95 % over prompts, the same items):", "",
              "| setting | single acc | joint acc | exact-all seen | exact-all unseen | per seed: unseen exact-all vs "
              "starting policy | per seed: single acc vs demo MOSLIM | per seed: unseen exact-all vs demo MOSLIM |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, s in rows.items():
        h = s["headline_mean"]

        def per_seed(against, metric, s=s):
            return "; ".join(f"{seed}: {paired_text(p[against][metric])}" for seed, p in s["paired"].items()
                             if against in p and metric in p[against]) or "-"  # fmt: skip

        lines.append(
            f"| {name} | " + " | ".join(f"{h[m]:.3f}" if m in h else "-" for m in
                                        ("single_accuracy", "joint_accuracy", "exact_all_seen", "exact_all_unseen"))
            + f" | {per_seed('starting policy', 'exact_all_unseen')} | "
            f"{per_seed('demo MOSLIM, same seed', 'single_accuracy')} | "
            f"{per_seed('demo MOSLIM, same seed', 'exact_all_unseen')} |"
        )  # fmt: skip
    lines += ["", "Seeds: `all` = evaluated once (greedy is deterministic; the sampled evaluation uses the demo's "
              "fixed sampling seed, as for every policy). Source `demo` = taken from the demo's report.json "
              "(same settings), not re-run. Gap: the conditional gap per objective (greedy), mean over "
              "seeds."]  # fmt: skip
    grid = results.get("ric_grid")
    if grid and "chosen" in grid:
        lines += ["", f"RiC grid ({grid['train_samples']} samples of non-held-back questions; validation: "
                  f"{len(grid['val_prompts'])} held-back train prompts, greedy, oracle):", "",
                  "| epochs | lr | val acc [95 % CI] | val gap | chosen |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for key, t in grid["trials"].items():
            lo, hi = t["val_accuracy_ci95"]
            lines.append(f"| {t['epochs']} | {t['lr']:g} | {t['val_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
                         f"{t['val_gap']:.3f} | {'yes' if key == grid['chosen'] else ''} |")  # fmt: skip
    lines += ["", f"The target (mean accuracy >= {TARGET} AND the worst seed beats the starting policy "
              f"(same style) and the best RiC seed by >= {MARGIN}, its 95 % interval above theirs):", ""]  # fmt: skip
    for name, v in summary["target"].items():
        if v["met"] is None:
            lines.append(f"- {name}: not evaluated ({v['why']})")
            continue
        beats = "; ".join(
            f"vs {r}: margin {b['margin']:+.3f}, interval {'above' if b['intervals_apart'] else 'not above'} theirs"
            for r, b in v["beats"].items()
        )
        lines.append(f"- {name}: **{'met' if v['met'] else 'not met'}** (mean {v['accuracy_mean']:.3f}; {beats})")
    if summary.get("mapping"):
        lines += ["", verdict_text(summary["mapping"])]
    lines += ["", f"![ablation]({Path(png).name})", "", "```", *results["commands"], "```", ""]
    return "\n".join(lines)


def load_demo_run(demo_dir):
    demo_dir = Path(demo_dir)
    needed = ("samples.jsonl", "rm/config.json", "report.json", "eval_samples.json")
    missing = [n for n in needed if not (demo_dir / n).is_file()]
    if missing:
        raise UserError(f"--demo_dir {demo_dir}: not a finished demo run (missing {', '.join(missing)}); run "
                        f"`python -m moslim_plugin demo --out {demo_dir}` first")  # fmt: skip
    report = json.loads((demo_dir / "report.json").read_text())
    if "policies_joint" not in report:
        raise UserError(f"--demo_dir {demo_dir}: made before the joint evaluation (no policies_joint in its "
                        "report.json); run the demo again")  # fmt: skip
    # A report from before the size presets and --device were recorded ran the full or quick preset on the CPU.
    report["settings"].setdefault("preset", "quick" if report["settings"].get("quick") else "full")
    report["settings"].setdefault("device", "cpu")
    # Before --moslim.rollout_dtype, the policy itself (fp32) sampled the rollouts.
    report["settings"]["rl_flags"].setdefault("moslim.rollout_dtype", "fp32")
    # Cross-directive relabelling is retired (docs/relabelling.md); earlier reports record it, off.
    if report["settings"]["rl_flags"].pop("moslim.relabel", "none") != "none":
        raise UserError(f"--demo_dir {demo_dir}: the demo ran with the retired --moslim.relabel (docs/relabelling.md)")
    report["settings"]["rl_flags"].pop("moslim.relabel_copies", None)
    samples = [json.loads(line) for line in (demo_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    return report, samples


def check_resumable(out, results, inputs) -> None:
    """A rerun may add seeds or settings, but only over a JSON made from the same demo run, flags and grid."""
    diff = [f"{k}: {results['inputs'].get(k)!r} there, {v!r} now" for k, v in inputs.items()
            if results["inputs"].get(k) != v]  # fmt: skip
    if diff:
        raise UserError(f"{out} was made from other inputs ({'; '.join(diff)}): pass another --out, or delete it "
                        "to start over")  # fmt: skip


def build_demos(a, report, samples) -> dict:
    """One run context (pipeline.Demo) per setting: the demo's flags plus the setting's own. Refuses settings whose
    MOSLIM rollouts do not number the demo's drawn samples (RiC's data, besides a top-up of the rare levels), and a
    RiC grid with nothing left to train on."""
    from moslim_plugin.demo.pipeline import Demo

    demo_dir = Path(a.demo_dir)
    # On-policy is one pass over each rollout batch, whatever the demo's own default (the demo now makes two).
    on_policy = ["--train.max_epochs", "1"]
    extra = {"base_tagged": ["--moslim.style", "tagged"], "base_natural": ["--moslim.style", "natural"],
             "moslim": on_policy, "moslim_best": shlex.split(a.best_flags), "long": shlex.split(a.long_flags),
             "mapping_expected_level": ["--moslim.mapping", "expected_level"],
             "mapping_target_logprob": ["--moslim.mapping", "target_logprob"]}  # fmt: skip
    # Policies go beside the demo run (runs/ is not committed), one folder per setting.
    demos = {name: Demo(demo_args(report, demo_dir / "ablation" / name, extra.get(name, []))) for name in a.settings}
    for name in [n for n in a.settings if n.startswith(("moslim", "mapping"))]:  # long: more rollouts by design
        size, args = demos[name].size, demos[name].args
        n_rl = size["rl_steps"] * size["batch"] * args.rollout.n_samples_per_prompt
        drawn = sum("top_up" not in s for s in samples)
        if n_rl != drawn:
            raise UserError(
                f"{name} would train on {size['rl_steps']} steps x {size['batch']} prompts x "
                f"{args.rollout.n_samples_per_prompt} samples = {n_rl} rollouts but RiC on the demo's {drawn} drawn "
                f"samples ({demo_dir / 'samples.jsonl'}): not the same number; rerun the demo with --demo.samples "
                f"{n_rl} (or sizes whose product is {drawn})"
            )
    questions = len({s["question"] for s in samples})
    if "ric" in a.settings and questions <= a.ric_val_prompts:
        raise UserError(f"--ric.val_prompts {a.ric_val_prompts}: the demo's samples have only {questions} distinct "
                        "questions; hold back fewer so some are left to train RiC's grid on")  # fmt: skip
    return demos


def print_plan(ctx, results, todo) -> None:
    """A rough duration from the demo's own stage timings (more PPO epochs cost more), for the cells neither
    finished nor taken from the demo's report."""
    a, t = ctx.a, ctx.report["timings_s"]
    per = {"base": t.get("evaluate base", 0), "ric": t.get("RiC SFT", 0),
           "moslim": statistics.mean([v for k, v in t.items() if k.startswith("MOSLIM RL seed")] or [0])}  # fmt: skip
    pending = [n for n, seed in todo if seed not in results["cells"].get(n, {})
               and reused_cell(ctx, n, None if seed == SEEDLESS else int(seed)) is None]  # fmt: skip
    trials = len(a.ric_epochs) * len(a.ric_lrs) if "ric" in pending and "ric_grid" not in results else 0
    kind = {"base": "base", "ric": "ric"}  # every other setting trains a MOSLIM policy (long: more steps than this)
    minutes = (sum(per[kind.get(n.split("_")[0], "moslim")] for n in pending) + trials * per["ric"]) / 60
    print(f"{len(pending)} cells to run (+ {trials} RiC trials): about {minutes:.0f} min at the demo's stage timings")


def rl_monitors(results, out) -> str:
    """Markdown (and a PNG for the curve) of what the RL cells logged: the reward-hacking monitor (the RM against the
    oracle on the rollouts, first vs last quarter of the steps) and, for cells with curve points, accuracy vs step."""
    from moslim_plugin.demo.oracle import demo_spec
    from moslim_plugin.demo.plots import plot_learning_curve
    from moslim_plugin.demo.report import agreement_monitor, interval

    spec, settings = demo_spec(), results["demo_settings"]
    rollouts = settings["size"]["batch"] * settings["rl_flags"]["rollout.n_samples_per_prompt"]
    histories = {f"{name} seed {seed}": c["history"] for name, cells in results["cells"].items()
                 for seed, c in cells.items() if c.get("history")}  # fmt: skip
    if not histories:
        return ""
    monitor = agreement_monitor(spec, histories, rollouts)
    results["agreement_monitor"] = monitor
    lines = ["", "RM against the oracle on the RL rollouts (agreement, first -> last quarter of the steps; "
             "**falling**: down by more than 0.02 and twice its standard error):", "",
             "| run | " + " | ".join(spec.names) + " |", "|" + " --- |" * (1 + len(spec.names))]  # fmt: skip
    for run, m in monitor.items():
        cells = [f"{m[n]['first']:.3f} -> {m[n]['last']:.3f}" + (" **falling**" if m[n]["falling"] else "")
                 for n in spec.names]  # fmt: skip
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    curve = plot_learning_curve(histories, out.with_name(out.stem + "_curve.png"))
    if curve:
        lines += ["", "Learning curve (greedy, the first held-out prompts; 95 % intervals over them):", "",
                  "| run | step | single-objective acc | exact-all seen | exact-all unseen |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for run, history in histories.items():
            for h in history:
                if "curve" in h:
                    c = h["curve"]
                    lines.append(f"| {run} | {h['step']} | " + " | ".join(
                        f"{c[m]['value']:.3f} {interval(c[m]['ci95'])}" if m in c else "-"
                        for m in ("single_accuracy", "exact_all_seen", "exact_all_unseen")) + " |")  # fmt: skip
        lines += ["", f"![learning curve]({Path(curve).name})"]
    return "\n".join(lines) + "\n"


def write_outputs(a, report, results, save) -> None:
    """The commands that reproduce the JSON (the demo's and one ablation call covering every cell), then the plot
    and the markdown table beside it."""
    demo_dir, out = Path(a.demo_dir), Path(a.out)
    all_settings = [n for n in SETTINGS if results["cells"].get(n)]
    all_seeds = sorted({int(s) for c in results["cells"].values() for s in c if s != SEEDLESS})
    grid_flags = (f"--ric.epochs {' '.join(map(str, a.ric_epochs))} --ric.lrs {' '.join(f'{x:g}' for x in a.ric_lrs)}"
                  f" --ric.val_prompts {a.ric_val_prompts}")  # fmt: skip
    results["commands"] = [
        demo_command(report, demo_dir),
        f"python -m bench.demo_ablation --demo_dir {demo_dir} --seeds {' '.join(map(str, all_seeds))} --settings "
        f"{' '.join(all_settings)} --best_flags={shlex.quote(a.best_flags)} --long_flags={shlex.quote(a.long_flags)} "
        f"{grid_flags} --out {out}",
    ]
    monitors = rl_monitors(results, out)  # sets results["agreement_monitor"]
    save()
    png, md_path = out.with_suffix(".png"), out.with_suffix(".md")
    plot({n: results["cells"][n] for n in all_settings}, png)
    md = markdown(results, results["summary"], png) + monitors
    md_path.write_text(md)
    print("\n" + md)
    print(f"json: {out}\nmarkdown: {md_path}\nplot: {png}")


def main_run(argv=None) -> int:
    from moslim_plugin.integration import compat

    compat.install()  # before openrlhf.models (RiC SFT and RL use its Actor)
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.demo.report import check_finite, flags_of

    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    report, samples = load_demo_run(a.demo_dir)
    demo_dir, out, style = Path(a.demo_dir), Path(a.out), report["settings"]["style"]
    demos = build_demos(a, report, samples)
    inputs = {"demo_dir": str(demo_dir.resolve()), "demo_report_sha256": sha256(demo_dir / "report.json"),
              "demo_samples_sha256": sha256(demo_dir / "samples.jsonl"), "best_flags": a.best_flags,
              "long_flags": a.long_flags, "ric_epochs": a.ric_epochs, "ric_lrs": a.ric_lrs,
              "ric_val_prompts": a.ric_val_prompts}  # fmt: skip
    results = json.loads(out.read_text()) if out.is_file() else {"inputs": inputs, "cells": {}}
    check_resumable(out, results, inputs)
    # The first run's machine stays `machine`; a resumed run (finished cells kept) adds its own to `resumed_on`, so
    # the cells measured before the interruption keep the date and threads they were measured with.
    if results["cells"]:
        results.setdefault("resumed_on", []).append(machine_info())
    else:
        results["machine"] = machine_info()
    results["demo_settings"] = report["settings"]
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        ordered = {n: results["cells"][n] for n in SETTINGS if results["cells"].get(n)}
        results["summary"] = summarize(ordered, style)
        results["summary"]["mapping"] = mapping_verdict(ordered, report["settings"]["mapping"])
        check_finite(results)
        out.write_text(json.dumps(results, indent=1) + "\n")  # after every cell: an interruption loses one cell

    # The demo's RM under each setting's own mapping (the mapping ablation); the same checkpoint for all.
    scorers = {name: Scorer.from_pretrained(demo_dir / "rm", mapping=d.args.moslim.mapping, device=d.args.device,
                                            mapping_kwargs=d.args.moslim.mapping_kwargs)
               for name, d in demos.items()}  # fmt: skip
    eval_samples = json.loads((demo_dir / "eval_samples.json").read_text())  # the items paired differences use
    ctx = argparse.Namespace(a=a, out=out, report=report, samples=samples, demos=demos, scorers=scorers,
                             eval_samples=eval_samples)  # fmt: skip
    todo = [(n, SEEDLESS if n.startswith("base_") else str(s)) for n in a.settings for s in a.seeds]
    todo = list(dict.fromkeys(todo))  # a base setting once, not once per seed
    print_plan(ctx, results, todo)
    for name, seed in tqdm(todo, desc="ablation cells"):
        cells = results["cells"].setdefault(name, {})
        if seed in cells:
            print(f"skip {name} seed {seed}: done in {out}")
            continue
        if name == "ric" and not hasattr(ctx, "ric_chosen"):
            ctx.ric_chosen = ric_grid(ctx, results, save)
        number = None if seed == SEEDLESS else int(seed)
        c = reused_cell(ctx, name, number) or run_cell(ctx, name, number)
        c["style"] = demos[name].style  # what the cell was measured with, for the reader of the JSON
        if not name.startswith(("base_", "ric")):
            c["rl_flags"], c["mapping"] = flags_of(demos[name].args), demos[name].args.moslim.mapping
        cells[seed] = c
        print(f"{name} seed {seed}: accuracy {c['metrics']['mean']['accuracy']:.3f} ({c['source']}, "
              f"{c['wall_s']:.0f} s)", flush=True)  # fmt: skip
        save()
    write_outputs(a, report, results, save)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main_run())
    except UserError as e:  # input the user can fix: one line, no traceback
        sys.exit(f"demo_ablation: {e}")
