"""Two demo runs that differ only in their rules, compared on the same held-out prompts with paired intervals.

Made for exact rules against learned heads (docs/rules.md, "Measured in the demo"):

    python -m moslim_plugin demo --out runs/demo_default --threads 1
    python -m moslim_plugin demo --out runs/demo_rules --demo.rules length,format --threads 1
    python -m bench.compare_demo_runs --a runs/demo_default --b runs/demo_rules

Both runs must share every setting but `rules` (refused otherwise, naming the difference) and must have answered
the same (prompt, request) items. Per policy of both runs (the starting policy, RiC, MOSLIM per seed), from their
greedy evaluation answers judged by the oracle (`eval_samples.json`): the demo's headline metrics and each
objective's accuracy under single-objective requests, and b - a with the demo's paired bootstrap 95 % interval over
prompts (the same resampled prompts for both runs). Also each run's reward model against the oracle: on every
policy's held-out answers (`rm_agreement`), on the RL rollouts (the hacking monitor, first -> last quarter of the
steps) and on its own held-out rows. Writes the JSON (docs/rules.md renders it: `python -m bench.render_docs`) and
the same name with .md and .png. Not a `make bench` script: it reads two finished demo runs.
"""

import argparse
import json
from pathlib import Path

from bench import figure, machine_info
from moslim_plugin.demo.metrics import bootstrap_ci, cells_mean, headline, paired_differences, prompt_cells

SAME = ("size", "preset", "device", "seeds", "mapping", "rl_flags", "policy", "heldout_prompts", "placement", "style",
        "sampling", "request_weights", "unseen")  # fmt: skip


def load_run(path) -> tuple[dict, dict]:
    run = Path(path)
    try:
        return json.loads((run / "report.json").read_text()), json.loads((run / "eval_samples.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{run}: not a finished demo run ({e})") from None


def objective_cells(samples, name) -> dict:
    """prompt -> {name: [hits, n]} over the single-objective requests for `name`."""
    single = [s for s in samples if list(s["request"]) == [name]]
    return prompt_cells(single, lambda s: [(name, s["achieved"][name] == s["request"][name])])


def compare(samples_a, samples_b, names, joint, unseen) -> dict:
    """b - a on the same items: the headline metrics and each objective, with paired bootstrap 95 % intervals."""
    out = paired_differences(samples_b, samples_a, joint, unseen)
    for name in names:
        b, a = objective_cells(samples_b, name), objective_cells(samples_a, name)
        out[name] = {"diff": cells_mean(b, list(b)) - cells_mean(a, list(b)), "ci95": bootstrap_ci(b, a)}
    return out


def levels_of(samples, names) -> dict:
    """Each objective's accuracy under single-objective requests for it."""
    return {name: cells_mean(c, list(c)) for name in names for c in [objective_cells(samples, name)]}


def main_run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the reference demo run (learned heads)")
    p.add_argument("--b", required=True, help="the demo run compared with it (--demo.rules length,format)")
    p.add_argument("--out", default="bench/results/demo_rules.json")
    args = p.parse_args(argv)
    (report_a, samples_a), (report_b, samples_b) = load_run(args.a), load_run(args.b)
    settings_a, settings_b = report_a["settings"], report_b["settings"]
    differ = [key for key in SAME if settings_a.get(key) != settings_b.get(key)]
    if differ:
        raise SystemExit(f"the runs differ in {differ}, not only in their rules: not comparable")
    policies = [name for name in samples_a if name in samples_b]
    for name in policies:
        items_a, items_b = (
            {json.dumps([s["prompt"], s["request"]]) for s in run[name]} for run in (samples_a, samples_b)
        )
        if items_a != items_b:
            raise SystemExit(f"{name}: the runs answered other prompts or requests: not comparable")
    names = list(samples_a["base"][0]["achieved"])
    joint = [s["request"] for s in samples_a["base"] if len(s["request"]) == len(names)]
    joint = [json.loads(r) for r in dict.fromkeys(json.dumps(r) for r in joint)]
    unseen = settings_a["unseen"]
    results = {
        "runs": {run: {"dir": d, "rules": s.get("rules", []), "minutes": r["timings_s"]["total"] / 60}
                 for run, d, s, r in (("a", args.a, settings_a, report_a), ("b", args.b, settings_b, report_b))},
        "seeds": settings_a["seeds"],
        "headline": {run: {name: {**headline(samples[name], joint, unseen), **levels_of(samples[name], names)}
                           for name in policies}
                     for run, samples in (("a", samples_a), ("b", samples_b))},
        "b_minus_a": {name: compare(samples_a[name], samples_b[name], names, joint, unseen) for name in policies},
        "rm_agreement": {run: {name: r["policies"][name].get("rm_agreement") for name in policies}
                         for run, r in (("a", report_a), ("b", report_b))},
        "hacking_monitor": {run: r["summary"]["agreement_monitor"] for run, r in (("a", report_a), ("b", report_b))},
        "rm_eval": {run: r["summary"]["rm_eval"] for run, r in (("a", report_a), ("b", report_b))},
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python -m bench.compare_demo_runs --a {args.a} --b {args.b} --out {args.out}"
    out.write_text(json.dumps({"machine": machine_info(), "command": command, **results}, indent=1))
    metrics = ["single_accuracy", "exact_all_seen", "exact_all_unseen", *names]
    size = dict(figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    with figure(out.with_suffix(".png"), 1, len(metrics), dpi=110, **size) as (fig, axes):
        for ax, metric in zip(axes[0], metrics):
            for y, name in enumerate(policies):
                d = results["b_minus_a"][name].get(metric)
                if d:
                    ax.errorbar(d["diff"], y, xerr=[[d["diff"] - d["ci95"][0]], [d["ci95"][1] - d["diff"]]], fmt="o")
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_yticks(range(len(policies)), policies if metric == metrics[0] else [], fontsize=8)
            ax.set_title(f"b - a: {metric}", fontsize=9)
        fig.suptitle(f"rules {settings_b.get('rules', [])} (b) vs learned heads (a), paired 95 % intervals")
    from bench.render_docs import demo_rules

    out.with_suffix(".md").write_text(f"# Exact rules vs learned heads in the demo\n\n{demo_rules(out)}\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main_run())
