"""The demo's results on paper: markdown tables, plots (matplotlib PNG), the pipeline's report.json / report.md, and
the check that no number in them is NaN.
"""

import json
import math
import statistics
import time
from pathlib import Path


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


def plot_panels(panels, path, ncols=None) -> str:
    """One PNG of line panels; each panel is {"title", "xlabel", "ylabel", "series": {label: (xs, ys)}, optional
    "xticks": labels for x = 0, 1, ..., "diagonal": draw y = x up to this value}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        if panel.get("diagonal") is not None:
            top = panel["diagonal"]
            ax.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect control")
        for label, (xs, ys) in panel["series"].items():
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        if panel.get("xticks"):
            ax.set_xticks(range(len(panel["xticks"])), panel["xticks"], rotation=20, fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_requested_vs_achieved(spec, evals: dict, path) -> str:
    """One panel per objective: mean achieved level for each requested level, one line per policy."""
    panels = []
    for name, levels in zip(spec.names, spec.levels):
        series = {}
        for policy, result in evals.items():
            by_level = result["metrics"]["objectives"][name]["by_level"]
            means = [sum(k * c for k, c in enumerate(by_level[str(lv)])) / max(sum(by_level[str(lv)]), 1)
                     for lv in range(levels)]  # fmt: skip
            series[policy] = (list(range(levels)), means)
        panels.append({"title": name, "xlabel": "requested level", "ylabel": "achieved level (mean)",
                       "series": series, "diagonal": levels - 1})  # fmt: skip
    return plot_panels(panels, path)


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


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def level_shares(spec, samples, histories) -> dict:
    """Each (objective, level)'s share of the initial samples and of all RL rollouts (every seed and step)."""
    shares = {"samples": {}, "rl_rollouts": {}}
    for name, levels in zip(spec.names, spec.levels):
        for level in range(levels):
            key = f"{name}={level}"
            shares["samples"][key] = sum(s["labels"][name] == level for s in samples) / len(samples)
            steps = [h[f"level/{key}"] for hist in histories.values() for h in hist if f"level/{key}" in h]
            if steps:
                shares["rl_rollouts"][key] = sum(steps) / len(steps)
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
    }


def write_report(demo, evals, histories, summary) -> None:
    """report.json / report.md / eval_samples.json and the two plots; prints the headline."""
    spec, args, out, timings = demo.spec, demo.args, demo.out, demo.timings
    curves = plot_panels(
        [{"title": title, "xlabel": "RL step",
          "series": {name: ([h["step"] for h in hist], [h[key] for h in hist]) for name, hist in histories.items()}}
         for key, title in [("reward", "MOSLIM reward (RM + mapping)"), ("oracle_hit", "oracle: requested levels hit"),
                            ("response_length", "response tokens")]],
        out / "training_curves.png",
    )  # fmt: skip
    plot = plot_requested_vs_achieved(spec, evals, out / "requested_vs_achieved.png")
    demo.done("report")
    timings["total"] = round(time.time() - demo.t_start, 1)
    report = {
        "settings": {"size": demo.size, "preset": demo.preset, "device": args.device, "seeds": args.seeds,
                     "mapping": args.moslim.mapping, "rl_flags": flags_of(args), "policy": str(demo.policy_path),
                     "heldout_prompts": len(demo.heldout), "placement": demo.placement, "style": demo.style,
                     "judge": "oracle"},
        "summary": summary,
        "timings_s": timings,
        "policies": {name: e["metrics"] for name, e in evals.items()},
        "policies_sampled": {name: e["sampled_metrics"] for name, e in evals.items() if "sampled_metrics" in e},
        "training": histories,
    }  # fmt: skip
    check_finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "eval_samples.json").write_text(json.dumps({k: e["samples"] for k, e in evals.items()}, indent=1))
    (out / "report.md").write_text(report_markdown(demo, evals, summary, plot, curves))
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
    print(f"report: {out / 'report.md'}\njson:   {out / 'report.json'}\nplots:  {plot}\n        {curves}")
    print(f"evaluate a policy again: moslim-openrlhf evaluate --actor.model_name_or_path {args.ckpt.output_dir} "
          f"--reward.model_name_or_path {out / 'rm'} --moslim.placement {demo.placement} "
          f"--moslim.style {demo.style} --device {args.device}")  # fmt: skip


def flags_of(args) -> dict:
    keys = ["actor.adam.lr", "algo.advantage.estimator", "algo.kl.init_coef", "rollout.n_samples_per_prompt",
            "rollout.batch_size", "rollout.max_new_tokens", "rollout.temperature", "reward.clip_range",
            "moslim.trainable_layers", "data.max_samples", "moslim.generate_batch_size", "rollout.micro_batch_size",
            "moslim.mapping_kwargs", "train.max_epochs", "train.batch_size", "ds.lora.rank",
            "moslim.rollout_dtype"]  # fmt: skip
    out = {}
    for key in keys:
        value = args
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def report_markdown(demo, evals, summary, plot, curves) -> str:
    spec, args, size, timings = demo.spec, demo.args, demo.size, demo.timings
    ci = summary["base_accuracy_ci95"], summary["ric_accuracy_ci95"]
    rm = summary["rm_eval"]
    rm_keys = sorted(k for k, v in next(iter(rm.values())).items() if isinstance(v, (int, float)))  # not confusion
    agreement = {name: e["metrics"].get("rm_agreement", {}) for name, e in evals.items()}
    lines = [
        "# MOSLIM demo report",
        "",
        f"Policy SmolLM2-135M-Instruct; reward model all-MiniLM-L6-v2 with {len(spec.names)} heads "
        f"({', '.join(f'{n}: {lv} levels' for n, lv in zip(spec.names, spec.levels))}); mapping "
        f"`{args.moslim.mapping}`; estimator `{args.algo.advantage.estimator}`; {size['rl_steps']} RL steps x "
        f"{size['batch']} prompts x {args.rollout.n_samples_per_prompt} samples per seed at temperature "
        f"{args.rollout.temperature}; seeds {args.seeds}; directive placement `{demo.placement}`, style "
        f"`{demo.style}`; size preset `{demo.preset}` on `{args.device}`.",
        f"Held-out prompts: {len(demo.heldout)}, each answered greedily once per single-objective request and once "
        f"with no preference, then {size['eval_samples']} sampled answer(s) per request at temperature "
        f"{args.rollout.temperature} (rows `(sampled)`); all levels judged by the oracle "
        "(`moslim_plugin/demo/oracle.py`), never by the reward model. Accuracy intervals: bootstrap 95 % over "
        "prompts. Gap: P(level L | asked L) - P(level L | asked another level), mean over L.",
        "",
        metrics_table(spec, evals),
        "",
        f"**MOSLIM mean exact-level accuracy: {summary['moslim_accuracy_mean']:.3f} +- "
        f"{summary['moslim_accuracy_std']:.3f}** (per seed "
        f"{[round(a, 3) for a in summary['moslim_accuracy_per_seed']]}, spread "
        f"{summary['moslim_accuracy_spread']:.3f}; 95 % intervals "
        f"{[[round(x, 3) for x in c] for c in summary['moslim_accuracy_ci95']]}); starting policy "
        f"{summary['base_accuracy']:.3f} [{ci[0][0]:.3f}, {ci[0][1]:.3f}]; RiC SFT {summary['ric_accuracy']:.3f} "
        f"[{ci[1][0]:.3f}, {ci[1][1]:.3f}]. Beats the starting policy by more than the seed spread: "
        f"**{'yes' if summary['moslim_beats_base_by_more_than_spread'] else 'no'}**.",
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
        "Level shares (RL can only reinforce a level it samples): "
        + "; ".join(f"{where}: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
                    for where, shares in summary["level_shares"].items() if shares),
        "",
        "RM against the oracle on each policy's greedy answers to the held-out prompts (argmax class vs oracle "
        "level; accuracy / macro-F1). The starting policy's row is the RM's held-out score on real outputs: "
        "prompts it never saw, no edited text.",
        "",
        "| policy | " + " | ".join(spec.names) + " |",
        "|" + " --- |" * (1 + len(spec.names)),
        *[f"| {p} | " + " | ".join(f"{a[n]['accuracy']:.3f} / {a[n]['macro_f1']:.3f}" for n in spec.names) + " |"
          for p, a in agreement.items() if a],
        "",
        f"![requested vs achieved]({Path(plot).name})",
        "",
        f"![training curves]({Path(curves).name})",
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
        "",
    ]  # fmt: skip
    return "\n".join(lines)
