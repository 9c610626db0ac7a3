"""Two demo runs that differ in one setting, compared on the same held-out prompts with paired intervals.

Made for exact rules against learned heads (docs/rules.md, "Measured in the demo"):

    python -m moslim_plugin demo --out runs/demo_learned --threads 2
    python -m moslim_plugin demo --out runs/demo_rules --demo.rules length,format --threads 2
    python -m bench.compare_demo_runs --a runs/demo_learned --b runs/demo_rules --out bench/results/demo_rules.json

Both runs must share the held-out prompts, the requests, the seeds and every setting but `rules` (refused
otherwise, naming the difference). Per policy of both runs (the starting policy, RiC, MOSLIM per seed), from their
greedy evaluation samples (`eval_samples.json`): the mean exact-level accuracy over objectives and per objective,
and the difference b - a with a paired bootstrap 95 % interval (the same resampled prompts for both runs; for
"MOSLIM, all seeds" the difference is averaged over seeds inside each resample). Also each run's reward-model
agreement with the oracle on every policy's answers (`rm_agreement`) and its RM's held-out metrics. Writes the JSON,
the same name with .md, and .png. Not a `make bench` script (no `main`): it reads two finished demo runs.
"""

import argparse
import json
import random
from pathlib import Path

from bench import machine_info

SAME = ("size", "preset", "device", "seeds", "mapping", "rl_flags", "policy", "heldout_prompts", "placement", "style")


def load_run(path) -> tuple[dict, dict]:
    run = Path(path)
    try:
        return json.loads((run / "report.json").read_text()), json.loads((run / "eval_samples.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{run}: not a finished demo run ({e})") from None


def hits_by_prompt(samples) -> dict:
    """prompt -> objective -> [hits, requests] over the greedy samples that requested the objective."""
    hits = {}
    for s in samples:
        for name, level in s["request"].items():
            cell = hits.setdefault(s["prompt"], {}).setdefault(name, [0, 0])
            cell[0] += s["achieved"][name] == level
            cell[1] += 1
    return hits


def accuracy(hits, prompts, names) -> dict:
    """Per objective and their mean (the demo's "mean acc"), over `prompts` (with repeats)."""
    per = {}
    for name in names:
        h = sum(hits[p].get(name, [0, 0])[0] for p in prompts)
        n = sum(hits[p].get(name, [0, 0])[1] for p in prompts)
        per[name] = h / n if n else float("nan")
    per["mean"] = sum(per[name] for name in names) / len(names)
    return per


def paired(hits_a: list, hits_b: list, names, resamples: int, seed: int) -> dict:
    """b - a (averaged over the pairs of policies given), point estimate and paired bootstrap 95 % interval."""
    prompts = sorted(hits_a[0])

    def diff(draw):
        per_pair = [
            {k: accuracy(hb, draw, names)[k] - accuracy(ha, draw, names)[k] for k in (*names, "mean")}
            for ha, hb in zip(hits_a, hits_b)
        ]
        return {k: sum(d[k] for d in per_pair) / len(per_pair) for k in (*names, "mean")}

    rng = random.Random(seed)
    draws = [diff(rng.choices(prompts, k=len(prompts))) for _ in range(resamples)]
    out = {}
    for k, value in diff(prompts).items():
        values = sorted(d[k] for d in draws)
        out[k] = {"diff": value, "ci95": [values[int(0.025 * (resamples - 1))], values[int(0.975 * (resamples - 1))]]}
    return out


def main_run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the reference demo run (e.g. learned heads)")
    p.add_argument("--b", required=True, help="the demo run compared with it (e.g. --demo.rules length,format)")
    p.add_argument("--out", default="bench/results/demo_rules.json")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    (report_a, samples_a), (report_b, samples_b) = load_run(args.a), load_run(args.b)
    settings_a, settings_b = report_a["settings"], report_b["settings"]
    differ = [key for key in SAME if settings_a.get(key) != settings_b.get(key)]
    if differ:
        raise SystemExit(f"the runs differ in {differ}, not only in their rules: not comparable")
    policies = [name for name in samples_a if name in samples_b]
    requests = {name: sorted(json.dumps([s["prompt"], s["request"]]) for s in samples_a[name]) for name in policies}
    if any(requests[name] != sorted(json.dumps([s["prompt"], s["request"]]) for s in samples_b[name])
           for name in policies):  # fmt: skip
        raise SystemExit("the runs were evaluated on other prompts or requests: not comparable")
    names = list(report_a["policies"]["base"]["objectives"])
    hits_a = {name: hits_by_prompt(samples_a[name]) for name in policies}
    hits_b = {name: hits_by_prompt(samples_b[name]) for name in policies}
    comparisons = {name: paired([hits_a[name]], [hits_b[name]], names, args.resamples, args.seed) for name in policies}
    moslim = [name for name in policies if name.startswith("MOSLIM seed")]
    comparisons["MOSLIM, all seeds"] = paired(
        [hits_a[n] for n in moslim], [hits_b[n] for n in moslim], names, args.resamples, args.seed
    )
    prompts = sorted(hits_a["base"])
    results = {
        "runs": {
            "a": {"dir": args.a, "rules": settings_a.get("rules", [])},
            "b": {"dir": args.b, "rules": settings_b.get("rules", [])},
        },  # fmt: skip
        "accuracy": {
            run: {name: accuracy(hits[name], prompts, names) for name in policies}
            for run, hits in (("a", hits_a), ("b", hits_b))
        },
        "b_minus_a": comparisons,
        "rm_agreement": {
            run: {name: report["policies"][name].get("rm_agreement") for name in policies}
            for run, report in (("a", report_a), ("b", report_b))
        },
        "rm_eval": {"a": report_a["summary"]["rm_eval"], "b": report_b["summary"]["rm_eval"]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python -m bench.compare_demo_runs --a {args.a} --b {args.b} --out {args.out}"
    out.write_text(json.dumps({"machine": machine_info(), "command": command, **results}, indent=1))
    png = out.with_suffix(".png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    rows = [*policies, "MOSLIM, all seeds"]
    for y, name in enumerate(rows):
        c = comparisons[name]["mean"]
        ax.errorbar(c["diff"], y, xerr=[[c["diff"] - c["ci95"][0]], [c["ci95"][1] - c["diff"]]], fmt="o")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(f"mean exact-level accuracy, b - a (b: rules {settings_b.get('rules', [])})")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    out.with_suffix(".md").write_text(markdown(results, names, rows, png, command))
    print(out.with_suffix(".md").read_text())
    return 0


def markdown(results, names, rows, png, command) -> str:
    acc, diff = results["accuracy"], results["b_minus_a"]
    lines = [
        f"# Demo: b ({results['runs']['b']['dir']}, rules {results['runs']['b']['rules']}) vs a "
        f"({results['runs']['a']['dir']}, rules {results['runs']['a']['rules']})",
        "",
        f"Command: `{command}`. Greedy answers to the same held-out prompts and requests, judged by the oracle; "
        "paired bootstrap 95 % intervals over prompts.",
        "",
        "| policy | a mean acc | b mean acc | b - a [95 % CI] | " + " | ".join(f"b - a {n}" for n in names) + " |",
        "|" + " --- |" * (4 + len(names)),
    ]
    for name in rows:
        a = f"{acc['a'][name]['mean']:.3f}" if name in acc["a"] else "-"
        b = f"{acc['b'][name]['mean']:.3f}" if name in acc["b"] else "-"
        d = diff[name]
        cells = [f"{d[n]['diff']:+.3f} [{d[n]['ci95'][0]:+.3f}, {d[n]['ci95'][1]:+.3f}]" for n in ("mean", *names)]
        lines.append(f"| {name} | {a} | {b} | " + " | ".join(cells) + " |")
    lines += ["", "Reward model vs oracle on each policy's greedy answers (accuracy / macro-F1; a rule is exact):", ""]
    lines += ["| run | policy | " + " | ".join(names) + " |", "|" + " --- |" * (2 + len(names))]
    for run in ("a", "b"):
        for name, agreement in results["rm_agreement"][run].items():
            if agreement:
                cells = [f"{agreement[n]['accuracy']:.3f} / {agreement[n]['macro_f1']:.3f}" for n in names]
                lines.append(f"| {run} | {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![b - a]({png.name})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main_run())
