"""The demo's results on paper: markdown tables, plots (matplotlib PNG), the pipeline's report.json / report.md, and
the check that no number in them is NaN.
"""

import json
import math
import statistics
import time
from pathlib import Path

from moslim_plugin.demo.metrics import METRIC_NAMES
from moslim_plugin.demo.plots import (
    plot_combination_grid,
    plot_learning_curve,
    plot_panels,
    plot_requested_vs_achieved,
)


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


def metrics_table(spec, evals: dict) -> str:
    """Markdown table: one row per policy (and per sampled evaluation), accuracy and gap per objective, then the
    mean accuracy with its bootstrap 95 % interval, the mean gap and (greedy) how often unrequested ones stayed."""
    head = ["policy", *(f"acc {n}" for n in spec.names), *(f"gap {n}" for n in spec.names), "mean acc [95 % CI]",
            "mean gap", "mean MAE", "unrequested kept"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for policy, result in evals.items():
        rows = [(policy, result["metrics"])]
        if "sampled_metrics" in result:
            rows.append((f"{policy} (sampled)", result["sampled_metrics"]))
        for label, m in rows:
            lo, hi = m["mean"]["accuracy_ci95"]
            cells = [f"{m['objectives'][n][key]:.3f}" for key in ("accuracy", "gap") for n in spec.names]
            kept = m["mean"].get("unrequested_kept")
            cells += [f"{m['mean']['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]", f"{m['mean']['gap']:.3f}",
                      f"{m['mean']['mae']:.3f}", "-" if kept is None else f"{kept:.3f}"]  # fmt: skip
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def joint_table(spec, evals: dict) -> str:
    """Markdown table of joint control: per policy (and sampled evaluation), each objective's accuracy under the
    full requests, their mean with its interval, and the exact-all rate over all, seen and unseen combinations."""
    head = ["policy", *(f"acc {n}" for n in spec.names), "mean acc [95 % CI]", "exact-all [95 % CI]",
            "exact-all seen", "exact-all unseen"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for policy, result in evals.items():
        rows = [(policy, result["joint_metrics"])]
        if "sampled_joint_metrics" in result:
            rows.append((f"{policy} (sampled)", result["sampled_joint_metrics"]))
        for label, m in rows:
            exact = m["exact_all"]
            cells = [f"{m['objectives'][n]:.3f}" for n in spec.names]
            cells.append(f"{m['mean_accuracy']:.3f} {interval(m['mean_accuracy_ci95'])}")
            cells += [f"{exact[g]['rate']:.3f} {interval(exact[g]['ci95'])}" if g in exact else "-"
                      for g in ("all", "seen", "unseen")]  # fmt: skip
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interval(ci, signed=False) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def paired_text(d) -> str:
    """A paired difference as the report writes it: "+0.050 [+0.020, +0.080]"."""
    return f"{d['diff']:+.3f} {interval(d['ci95'], signed=True)}"


def agreement_monitor(spec, histories, rollouts_per_step) -> dict:
    """The reward-hacking monitor: per policy and objective, the RM's agreement with the oracle on the rollouts
    (argmax level == oracle level, logged at every step as `agree/<objective>`), averaged over the first and the
    last quarter of the steps (at least 2 steps each). `falling`: the last is lower than the first by more than
    0.02 and by more than twice the standard error of the difference: the RM paying for levels the oracle does not
    see, i.e. reward hacking."""
    monitor = {}
    for policy, history in histories.items():
        for name in spec.names:
            values = [h[f"agree/{name}"] for h in history if f"agree/{name}" in h]
            window = max(2, len(values) // 4)
            if len(values) < 2 * window:
                continue
            first, last = statistics.mean(values[:window]), statistics.mean(values[-window:])
            n = window * rollouts_per_step
            se = math.sqrt(first * (1 - first) / n + last * (1 - last) / n)
            monitor.setdefault(policy, {})[name] = {
                "first": first, "last": last, "min": min(values), "window_steps": window,
                "falling": first - last > max(0.02, 2 * se),
            }  # fmt: skip
    return monitor


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# Every level of every objective should be at least this share of the samples and of the RL rollouts: the RM learns a
# level from its examples, and RL can only reinforce a level it samples.
MIN_LEVEL_SHARE = 0.15
LEVEL_SHARE_LABELS = {"samples": "samples", "rl_rollouts": "all RL rollouts",
                      "rl_rollouts_asking": "RL rollouts asking for the objective"}  # fmt: skip


def level_shares_text(shares: dict) -> str:
    """`level_shares` in one line, each share under MIN_LEVEL_SHARE marked **below**."""
    return "; ".join(
        f"{LEVEL_SHARE_LABELS.get(where, where)}: "
        + ", ".join(f"{k} {v:.2f}" + (" **below**" if v < MIN_LEVEL_SHARE else "") for k, v in by_level.items())
        for where, by_level in shares.items() if by_level
    )  # fmt: skip


def level_shares(spec, samples, histories) -> dict:
    """Each (objective, level)'s share of the samples, of all RL rollouts (every seed and step), and of the RL
    rollouts whose request includes the objective (rl_rollouts_asking: the masked reward moves only with those)."""
    shares = {"samples": {}, "rl_rollouts": {}, "rl_rollouts_asking": {}}
    steps = [h for hist in histories.values() for h in hist if "reward" in h]  # every step has as many rollouts
    for name, levels in zip(spec.names, spec.levels):
        for level in range(levels):
            key = f"{name}={level}"
            if samples:
                shares["samples"][key] = sum(s["labels"][name] == level for s in samples) / len(samples)
            if steps:
                shares["rl_rollouts"][key] = sum(h[f"level/{key}"] for h in steps) / len(steps)
            # Histories logged before the asking shares have none (the default's reports and ablation cells).
            asked = sum(h[f"asked/{name}"] for h in steps) if all(f"asked/{name}" in h for h in steps) else 0
            if asked:
                shares["rl_rollouts_asking"][key] = sum(h[f"asked_level/{key}"] for h in steps) / asked
    return shares


def summarize(evals, seeds, rm_result, ric_losses) -> dict:
    """report.json's summary: mean exact-level accuracy (greedy) per policy with bootstrap 95 % intervals, the
    sampled accuracy and the mean conditional gap; the verdict compares MOSLIM with the starting policy."""
    greedy = {name: e["metrics"]["mean"] for name, e in evals.items()}
    sampled = {name: e["sampled_metrics"]["mean"] for name, e in evals.items() if "sampled_metrics" in e}
    moslim = [f"MOSLIM seed {s}" for s in seeds]
    moslim_acc = [greedy[name]["accuracy"] for name in moslim]
    acc_mean, acc_std = mean_std(moslim_acc)
    spread = max(moslim_acc) - min(moslim_acc)
    base_acc = greedy["base"]["accuracy"]
    return {
        "moslim_accuracy_per_seed": moslim_acc,
        "moslim_accuracy_mean": acc_mean,
        "moslim_accuracy_std": acc_std,
        "moslim_accuracy_spread": spread,
        "base_accuracy": base_acc,
        "ric_accuracy": greedy["RiC SFT"]["accuracy"],
        "moslim_accuracy_ci95": [greedy[name]["accuracy_ci95"] for name in moslim],
        "base_accuracy_ci95": greedy["base"]["accuracy_ci95"],
        "ric_accuracy_ci95": greedy["RiC SFT"]["accuracy_ci95"],
        "sampled_accuracy": {name: m["accuracy"] for name, m in sampled.items()},
        "sampled_accuracy_ci95": {name: m["accuracy_ci95"] for name, m in sampled.items()},
        "gap": {name: m["gap"] for name, m in greedy.items()},
        "sampled_gap": {name: m["gap"] for name, m in sampled.items()},
        "moslim_beats_base_by_more_than_spread": acc_mean - base_acc > max(spread, acc_std),
        "rm_eval": rm_result["metrics"],
        # The RM on the starting policy's answers to the held-out prompts: real outputs, prompts it never trained on.
        "rm_on_base_answers": evals["base"]["metrics"]["rm_agreement"],
        "ric_sft_loss_first_last": [ric_losses[0], ric_losses[-1]],
        "rm_selection": rm_result["selection"],  # which epoch's weights were kept, and every evaluation's metrics
    }


# Issue targets the report checks: on the unseen full combinations every MOSLIM seed's exact-all rate at least this
# much above the starting policy's, with the paired interval above 0; the mean single-objective accuracy over
# seeds; `make demo` (the default run) within this many minutes on 2 idle cores.
TARGETS = {"unseen_exact_all_gain": 0.10, "single_accuracy": 0.80, "demo_minutes": 30}


def targets(summary, seeds) -> dict:
    """Each target with the measured value and whether it is met (the report says so plainly either way)."""
    gains = {}
    for seed in seeds:
        d = summary["paired"][f"MOSLIM seed {seed}"]["starting policy"].get("exact_all_unseen")
        if d is not None:
            gains[str(seed)] = {**d, "met": d["diff"] >= TARGETS["unseen_exact_all_gain"] and d["ci95"][0] > 0}
    return {
        "unseen_exact_all_gain": {"target": TARGETS["unseen_exact_all_gain"], "per_seed": gains,
                                  "met": bool(gains) and all(g["met"] for g in gains.values())},
        "single_accuracy": {"target": TARGETS["single_accuracy"], "value": summary["moslim_accuracy_mean"],
                            "met": summary["moslim_accuracy_mean"] >= TARGETS["single_accuracy"]},
    }  # fmt: skip


def write_report(demo, evals, histories, summary) -> None:
    """report.json / report.md / eval_samples.json and the two plots; prints the headline."""
    spec, args, out, timings = demo.spec, demo.args, demo.out, demo.timings
    panels = [
        ("reward", "MOSLIM reward (RM + mapping)"),
        ("oracle_hit", "oracle: requested levels hit"),
        ("response_length", "response tokens"),
    ]
    panels += [(f"agree/{n}", f"RM = oracle on the rollouts: {n}") for n in spec.names]
    curves = plot_panels(
        [{"title": title, "xlabel": "RL step",
          "series": {name: ([h["step"] for h in hist if key in h], [h[key] for h in hist if key in h])
                     for name, hist in histories.items()}}
         for key, title in panels],
        out / "training_curves.png", ncols=3,
    )  # fmt: skip
    plot = plot_requested_vs_achieved(spec, evals, out / "requested_vs_achieved.png")
    grid = plot_combination_grid(spec, {"starting policy": evals["base"], "MOSLIM (mean of seeds)": seed_mean(
        [evals[f"MOSLIM seed {s}"] for s in args.seeds])}, demo.unseen, out / "combination_grid.png")  # fmt: skip
    curve = plot_learning_curve(histories, out / "learning_curve.png")
    demo.done("report")
    timings["total"] = round(time.time() - demo.t_start, 1)
    report = {
        "settings": {"size": demo.size, "preset": demo.preset, "device": args.device, "seeds": args.seeds,
                     "rules": [o.name for o in spec.objectives if o.rule is not None],
                     "mapping": args.moslim.mapping, "rl_flags": flags_of(args), "policy": str(demo.policy_path),
                     "heldout_prompts": len(demo.heldout), "placement": demo.placement, "style": demo.style,
                     "judge": "oracle", "sampling": args.moslim.sampling, "request_weights": demo.request_weights,
                     "unseen": demo.unseen},
        "summary": summary,
        "timings_s": timings,
        "policies": {name: e["metrics"] for name, e in evals.items()},
        "policies_sampled": {name: e["sampled_metrics"] for name, e in evals.items() if "sampled_metrics" in e},
        "policies_joint": {name: e["joint_metrics"] for name, e in evals.items()},
        "policies_joint_sampled": {name: e["sampled_joint_metrics"] for name, e in evals.items()
                                   if "sampled_joint_metrics" in e},
        "training": histories,
    }  # fmt: skip
    check_finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "eval_samples.json").write_text(json.dumps({k: e["samples"] for k, e in evals.items()}, indent=1))
    (out / "report.md").write_text(report_markdown(demo, evals, summary, [plot, grid, curves, curve]))
    s = summary
    print("\n" + metrics_table(spec, evals))
    print(
        f"\nMOSLIM mean exact-level accuracy {s['moslim_accuracy_mean']:.3f} +- {s['moslim_accuracy_std']:.3f} "
        f"(seeds {args.seeds}, spread {s['moslim_accuracy_spread']:.3f}) vs starting policy {s['base_accuracy']:.3f}, "
        f"RiC SFT {s['ric_accuracy']:.3f}: "
        + ("beats the starting policy by more than the spread" if s["moslim_beats_base_by_more_than_spread"]
           else "does NOT beat the starting policy by more than the seed spread")
    )  # fmt: skip
    print(f"total {timings['total']:.0f} s; stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print("\n" + joint_table(spec, evals))
    for policy, against in summary["paired"].items():
        diffs = [f"vs {ref}: " + ", ".join(f"{m} {paired_text(d[m])}" for m in ("single_accuracy", "exact_all_unseen")
                                           if m in d) for ref, d in against.items()]  # fmt: skip
        print(f"{policy}: " + "; ".join(diffs))
    print(f"report: {out / 'report.md'}\njson:   {out / 'report.json'}\nplots:  " + ", ".join(
        str(p) for p in (plot, grid, curves, curve) if p))  # fmt: skip
    print(f"evaluate a policy again: moslim-openrlhf evaluate --actor.model_name_or_path {args.ckpt.output_dir} "
          f"--reward.model_name_or_path {out / 'rm'} --moslim.placement {demo.placement} "
          f"--moslim.style {demo.style} --device {args.device}")  # fmt: skip


def seed_mean(results) -> dict:
    """The per-combination exact-all rates averaged over seeds, in an evaluation's shape (for the grid plot)."""
    combos = results[0]["joint_metrics"]["combinations"]
    mean = {}
    for key, entry in combos.items():
        rates = [r["joint_metrics"]["combinations"][key]["exact_all"] for r in results]
        mean[key] = {**entry, "exact_all": statistics.mean(rates)}
    return {"joint_metrics": {"combinations": mean}}


def flags_of(args) -> dict:
    keys = ["actor.adam.lr", "algo.advantage.estimator", "algo.kl.init_coef", "rollout.n_samples_per_prompt",
            "rollout.batch_size", "rollout.max_new_tokens", "rollout.temperature", "reward.clip_range",
            "moslim.trainable_layers", "data.max_samples", "moslim.generate_batch_size", "rollout.micro_batch_size",
            "moslim.mapping_kwargs", "train.max_epochs", "train.batch_size", "ds.lora.rank",
            "moslim.rollout_dtype", "moslim.sampling", "demo.top_up",
            "demo.rm_seed", "demo.list_weight"]  # fmt: skip
    out = {}
    for key in keys:
        value = args
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def report_markdown(demo, evals, summary, plots) -> str:
    spec, args, size, timings = demo.spec, demo.args, demo.size, demo.timings
    plot, grid, curves, curve = plots
    ci = summary["base_accuracy_ci95"], summary["ric_accuracy_ci95"]
    rm, top = summary["rm_eval"], summary["sample_top_up"]
    rm_keys = sorted(k for k, v in next(iter(rm.values())).items() if isinstance(v, (int, float)))  # not confusion
    agreement = {name: e["metrics"].get("rm_agreement", {}) for name, e in evals.items()}
    unseen = ", ".join(f"({', '.join(f'{n}={lv}' for n, lv in u.items())})" for u in demo.unseen) or "none"
    paired_metrics = [m for m in METRIC_NAMES if m in next(iter(next(iter(summary["paired"].values())).values()))]
    goal = summary["targets"]
    k_range = {"single": "1", "subset": f"1..{len(spec.names)}"}.get(args.moslim.sampling, str(len(spec.names)))
    monitor = summary["agreement_monitor"]
    lines = [
        "# MOSLIM demo report",
        "",
        f"Policy SmolLM2-135M-Instruct; reward model all-MiniLM-L6-v2 with {len(spec.learned)} heads "
        f"({', '.join(f'{spec.names[i]}: {spec.levels[i]} levels' for i in spec.learned)})"
        + "".join(f", exact rule for {o.name} ({o.rule})" for o in spec.objectives if o.rule is not None)
        + f"; mapping "
        f"`{args.moslim.mapping}`; estimator `{args.algo.advantage.estimator}`; {size['rl_steps']} RL steps x "
        f"{size['batch']} prompts x {args.rollout.n_samples_per_prompt} samples per seed at temperature "
        f"{args.rollout.temperature}; seeds {args.seeds}; directive placement `{demo.placement}`, style "
        f"`{demo.style}`; size preset `{demo.preset}` on `{args.device}`.",
        f"Requests of the samples and RL prompts: `--moslim.sampling {args.moslim.sampling}` (k = {k_range} "
        f"objectives per request), level weights {demo.request_weights}; unseen full combinations, never "
        f"requested in the samples or the RL and never in the RM's or RiC's data: {unseen}.",
        f"Held-out prompts: {len(demo.heldout)}, each answered greedily once per single-objective request, once per "
        f"full combination ({len(demo.joint)}) and once with no preference, then {size['eval_samples']} sampled "
        f"answer(s) per request at temperature {args.rollout.temperature} (rows `(sampled)`); all levels judged by "
        "the oracle (`moslim_plugin/demo/oracle.py`), never by the reward model. Intervals: bootstrap 95 % over "
        "prompts; differences between policies: paired bootstrap over prompts (same items for both). Gap: "
        "P(level L | asked L) - P(level L | asked another level), mean over L.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        *[f"| unseen exact-all, MOSLIM seed {seed} - starting policy >= +{goal['unseen_exact_all_gain']['target']:.2f}"
          f", interval above 0 | {paired_text(g)} | {'yes' if g['met'] else '**no**'} |"
          for seed, g in goal["unseen_exact_all_gain"]["per_seed"].items()],
        f"| single-objective accuracy, mean over MOSLIM seeds >= {goal['single_accuracy']['target']:.2f} | "
        f"{goal['single_accuracy']['value']:.3f} | {'yes' if goal['single_accuracy']['met'] else '**no**'} |",
        f"| this run's wall time (the target, <= {TARGETS['demo_minutes']} min, is `make demo`'s) | "
        f"{timings['total'] / 60:.1f} min | {'yes' if timings['total'] <= 60 * TARGETS['demo_minutes'] else 'no'} |",
        "",
        "## Single-objective requests",
        "",
        metrics_table(spec, evals),
        "",
        f"**MOSLIM mean exact-level accuracy: {summary['moslim_accuracy_mean']:.3f} +- "
        f"{summary['moslim_accuracy_std']:.3f}** (per seed "
        f"{[round(a, 3) for a in summary['moslim_accuracy_per_seed']]}, spread "
        f"{summary['moslim_accuracy_spread']:.3f}; 95 % intervals "
        f"{[[round(x, 3) for x in c] for c in summary['moslim_accuracy_ci95']]}); starting policy "
        f"{summary['base_accuracy']:.3f} [{ci[0][0]:.3f}, {ci[0][1]:.3f}]; RiC SFT {summary['ric_accuracy']:.3f} "
        f"[{ci[1][0]:.3f}, {ci[1][1]:.3f}].",
        "",
        "## Joint requests: every full combination at once",
        "",
        joint_table(spec, evals),
        "",
        f"![combination grid]({Path(grid).name})",
        "",
        "## Paired differences (same prompts and requests; paired bootstrap 95 % over prompts)",
        "",
        "| MOSLIM seed | against | " + " | ".join(METRIC_NAMES[m] for m in paired_metrics) + " |",
        "|" + " --- |" * (2 + len(paired_metrics)),
        *[f"| {policy} | {ref} | " + " | ".join(paired_text(d[m]) for m in paired_metrics) + " |"
          for policy, against in summary["paired"].items() for ref, d in against.items()],
        "",
        "Baseline: RiC-style rewards-in-context SFT (the initial samples, each directive relabelled to the levels the "
        "response actually has). It uses the same samples, prompts and directive format as MOSLIM and no reward "
        "model, so it isolates what RL with the MOSLIM reward adds over supervised conditioning.",
        "",
        "## Reward model (held-out split of the initial samples and their edits)",
        "",
        "| head | " + " | ".join(rm_keys) + " |",
        "|" + " --- |" * (1 + len(rm_keys)),
        *[f"| {n} | " + " | ".join(f"{m[k]:.3g}" for k in rm_keys) + " |" for n, m in rm.items()],
        "",
        f"Level shares (RL can only reinforce a level it samples; bar: every level >= {MIN_LEVEL_SHARE * 100:.0f} %): "
        + level_shares_text(summary["level_shares"])
        + ("." if top is None else
           f". The samples include the top-up of the levels below {top['share']:.0%}: {top['generated']} answers "
           f"generated to requests for them, {sum(top['kept'].values())} kept ("
           + (", ".join(f"{k}: {v}" for k, v in top["kept"].items()) or "none needed") + ")"
           + (f", still below: {', '.join(top['unmet'])}" if top["unmet"] else "") + "."),
        "",
        "RM against the oracle on each policy's greedy answers to the held-out prompts (argmax class vs oracle "
        "level; accuracy / macro-F1; single-objective, joint and no-preference answers). The starting policy's row "
        "is the RM's held-out score on real outputs: prompts it never saw, no edited text.",
        "",
        "| policy | " + " | ".join(spec.names) + " |",
        "|" + " --- |" * (1 + len(spec.names)),
        *[f"| {p} | " + " | ".join(f"{a[n]['accuracy']:.3f} / {a[n]['macro_f1']:.3f}" for n in spec.names) + " |"
          for p, a in agreement.items() if a],
        "",
        "## Reward-hacking monitor: the RM against the oracle on the RL rollouts, at every step",
        "",
        "Agreement (RM argmax level = oracle level) over the first and the last quarter of the steps; **falling** = "
        "lower at the end by more than 0.02 and twice its standard error (the RM paying for what the oracle does "
        "not see). Curves: the `RM = oracle` panels of the training curves.",
        "",
        "| policy | " + " | ".join(spec.names) + " |",
        "|" + " --- |" * (1 + len(spec.names)),
        *[f"| {p} | " + " | ".join(
            f"{m[n]['first']:.3f} -> {m[n]['last']:.3f}" + (" **falling**" if m[n]["falling"] else "")
            if n in m else "-" for n in spec.names) + " |" for p, m in monitor.items()],
        "",
        f"![requested vs achieved]({Path(plot).name})",
        "",
        f"![training curves]({Path(curves).name})",
        "",
    ]  # fmt: skip
    if curve:
        lines += [
            "## Learning curve (greedy, fixed held-out subset)",
            "",
            f"![learning curve]({Path(curve).name})",
            "",
        ]
    lines += ["Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()), ""]
    return "\n".join(lines)
