"""Every number in docs/benchmarks.md and in the README's results comes from a results JSON, through this script.

A doc holds marked regions; the text between the markers is rendered from the JSON files and never edited by hand:

    <!-- results: hh_rlhf_check -->
    (rendered text)
    <!-- /results -->

`python -m bench.render_docs` rewrites every region of the docs below from `bench/results/*.json` (and the demo
reports in `docs/demo/`); `--check` writes nothing and exits 1 naming each region whose text differs from what the
JSON renders. `make bench` renders after the benchmarks; `tests/test_docs_numbers.py` runs the check, and refuses a
number in docs/benchmarks.md or the README's results written outside a region (a command's own values, in code
spans, excepted), so a published number cannot silently go stale.
"""

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

from bench import RESULTS_DIR
from moslim_plugin.demo.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/benchmarks.md", "docs/results.md", "docs/rules.md")
REGION = re.compile(r"(<!-- results: ([\w.-]+) -->\n)(.*?)(<!-- /results -->)", re.S)
RENDERERS = {}


def renderer(fn):
    RENDERERS[fn.__name__] = fn
    return fn


def load(name: str) -> dict:
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())


def bench_scripts() -> list[str]:
    """The bench scripts with a results file in write_result's format (bench/<name>.py beside <name>.json)."""
    names = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        if (ROOT / "bench" / f"{path.stem}.py").is_file() and "headline" in json.loads(path.read_text()):
            names.append(path.stem)
    return names


def run_failures() -> dict:
    """Scripts the last `make bench` saw fail, unless their results file was written since (bench/run_all.py)."""
    path = RESULTS_DIR / "run_all.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    failed = {}
    for run in record["runs"]:
        result = RESULTS_DIR / f"{run['name']}.json"
        if run["error"] and not (result.is_file() and result.stat().st_mtime > path.stat().st_mtime):
            failed[run["name"]] = f"{run['error']} ({record['date_utc']})"
    return failed


def fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def machine_line(machine: dict) -> str:
    threads = machine.get("torch_threads")
    load = machine.get("load_average")
    return (
        f"{machine['cpu']}, {machine['cpu_count']} CPUs, GPU: {machine['gpu'] or 'none'}, {threads} torch "
        f"thread{'s' * (threads != 1)}"
        + (f", load average {load[0]:.1f} at the end" if load else "")
        + f"; torch {machine['torch']}, transformers {machine['transformers']}, OpenRLHF {machine['openrlhf']}"
    )


@renderer
def headline_table() -> str:
    lines = ["| script | metric | value | target | met | measured |", "|---|---|---|---|---|---|"]
    failed = run_failures()
    for name in bench_scripts():
        result = load(name)
        if name in failed:
            lines.append(f"| {name} | **FAILED in the last `make bench`: {failed[name]}** | | | | |")
        for item in result["headline"]:
            met = {True: "yes", False: "**NO**", None: "n/a"}[item["met"]]
            date = result["machine"]["date_utc"][:10]
            lines.append(f"| {name} | {item['metric']} | {fmt(item['value'])} | {item['target']} | {met} | {date} |")
    return "\n".join(lines)


@renderer
def summaries() -> str:
    lines = []
    for name in bench_scripts():
        result = load(name)
        lines.append(f"- `{name}` ({result['machine']['date_utc']}; {machine_line(result['machine'])}): "
                     f"{result['summary']}")  # fmt: skip
        lines += [f"  ![{png.stem}](../bench/results/{png.name})" for png in sorted(RESULTS_DIR.glob(f"{name}.png"))]
    return "\n".join(lines)


def ci(acc: dict) -> str:
    return f"{acc['accuracy']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]"


SHORT_NAMES = {"minilm": "MiniLM", "smollm2": "SmolLM2-135M"}
BACKBONE_NAMES = {
    "minilm": "all-MiniLM-L6-v2",
    "smollm2": "SmolLM2-135M-Instruct (decoder, last-token pooling)",
}


def hh_findings(name: str, b: dict) -> str:
    m, o = b["moslim"]["pairwise_accuracy"]["all"], b["openrlhf"]["pairwise_accuracy"]["all"]
    overlap = m["ci95"][0] <= o["ci95"][1] and o["ci95"][0] <= m["ci95"][1]
    if m["accuracy"] == o["accuracy"]:
        which = f"both RMs score {m['accuracy']:.3f}"
    else:
        better = "MOSLIM's classification RM" if m["accuracy"] > o["accuracy"] else "OpenRLHF's pairwise RM"
        which = f"{better} scores higher ({max(m['accuracy'], o['accuracy']):.3f} vs "
        which += f"{min(m['accuracy'], o['accuracy']):.3f})"
    return f"{name}: {which}; the intervals {'overlap' if overlap else 'do not overlap'}"


@renderer
def hh_rlhf_check() -> str:
    result = load("hh_rlhf_check")
    r, config, machine = result["results"], result["config"], result["machine"]
    backbones = r["backbones"]
    fitting, dropped = r["pairs_fitting_max_len"], r["pairs_dropped"]
    lines = [
        f"Measured {machine['date_utc']} ({machine_line(machine)}), `--max_len {r['max_len']}`: "
        f"{fitting} of the {fitting + dropped} pairs of both test files ({100 * fitting / (fitting + dropped):.0f} %)"
        f" fit whole under every backbone's tokenizer; the other {dropped} are dropped. Held-out pairs are drawn half "
        f"from helpful-base and half from harmless-base, split by prompt (`--eval_ratio {config['eval_ratio']}` of "
        f"the prompts held out, seed {config['seed']}).",
        "",
        "| backbone | train pairs (steps x pairs), lr | MOSLIM classification RM | OpenRLHF pairwise RM |",
        "|---|---|---|---|",
    ]
    for name, b in backbones.items():
        m, o = b["moslim"]["pairwise_accuracy"]["all"], b["openrlhf"]["pairwise_accuracy"]["all"]
        lines.append(
            f"| {BACKBONE_NAMES.get(name, name)}, {r['max_len']} tokens | {b['train_pairs']} ({b['steps']} x "
            f"{config['batch_pairs']}), lr {b['lr']:g} | {ci(m)} | {ci(o)} |"
        )
    ties = sum(b[k]["pairwise_accuracy"]["all"]["ties"] for b in backbones.values() for k in ("moslim", "openrlhf"))
    per_subset = [
        f"{name} {s} {b['moslim']['pairwise_accuracy'][s]['accuracy']:.2f} vs "
        f"{b['openrlhf']['pairwise_accuracy'][s]['accuracy']:.2f}"
        for name, b in backbones.items()
        for s in ("helpful", "harmless")
    ]
    e = r["eval_pairs"]
    lines += [
        "",
        f"{e['all']} held-out pairs ({e['helpful']} helpful, {e['harmless']} harmless; the same pairs for every "
        f"backbone and both RMs), 95 % bootstrap intervals, {ties} ties in all. Per subset, MOSLIM vs OpenRLHF: "
        + ", ".join(per_subset)
        + ".",
        "",
        "- " + ". ".join(hh_findings(name, b) for name, b in backbones.items()) + ".",
        "- Cost (training loop only): "
        + "; ".join(
            f"{name} MOSLIM {b['moslim']['train_seconds']:.0f} s, OpenRLHF {b['openrlhf']['train_seconds']:.0f} s"
            for name, b in backbones.items()
        )
        + f"; {r['wall_seconds'] / 60:.0f} min wall for the whole run.",
    ]
    for path, scored in r.get("eval_files", {}).items():
        lines.append(
            f"- `--eval_file {Path(path).name}` ({scored['pairs']} pairs): "
            + "; ".join(
                f"{n} MOSLIM {ci(s['moslim'])} vs OpenRLHF {ci(s['openrlhf'])}"
                for n, s in scored.items()
                if n != "pairs"
            )  # fmt: skip
        )
    return "\n".join(lines)


def median_and_range(values) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


ROLLOUT_VARIANTS = {
    "loop_b32 / hf_b16": "KV-cached loop, fp32 policy (SDPA), 32 rows",
    "copy_fp32_b32 / hf_b16": "rollout copy, fp32, eager attention",
    "copy_bf16_b32 / hf_b16": "rollout copy, bf16, eager attention (the driver's default)",
}


@renderer
def bench_rollout() -> str:
    result = load("bench_rollout")
    shapes, config = result["results"]["shapes"], result["config"]
    lines = [
        f"`python -m bench.bench_rollout --repeats {config['repeats']} --threads {config['threads']}` "
        f"({result['machine']['date_utc']}; {machine_line(result['machine'])}): interleaved runs, the median of the "
        f"paired ratios and their range over the {config['repeats']} repeats. {config['model']}, "
        f"{config['max_new_tokens']} new tokens, T={config['temperature']}. Samples/s relative to HF `generate` in "
        "batches of 16 on the fp32 policy:",
        "",
        "| variant | demo RL step (8 prompts x 4 samples) | 32 distinct prompts |",
        "|---|---|---|",
    ]
    for key, label in ROLLOUT_VARIANTS.items():
        cells = [median_and_range(shapes[s]["paired_ratio"][key]) for s in ("demo_8x4", "distinct_32")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    differing = result["results"]["greedy_rows_differing_from_hf"]
    lines += ["", f"Greedy rows differing from HF `generate`: {differing} of {config['greedy_prompts']}."]
    return "\n".join(lines)


@renderer
def rollout_prefix() -> str:
    before, after = (load(f"rollout_prefix/{n}")["results"]["shapes"] for n in ("before", "after"))
    key = "copy_bf16_b32 / hf_b16"

    def pair(shape):
        b, a = before[shape]["paired_ratio"][key], after[shape]["paired_ratio"][key]
        return (f"{statistics.median(b):.2f}x ({', '.join(f'{x:.2f}' for x in b)}) -> "
                f"{statistics.median(a):.2f}x ({', '.join(f'{x:.2f}' for x in a)})")  # fmt: skip

    return f"Before -> after, bf16 copy: 32 distinct prompts {pair('distinct_32')}; demo step {pair('demo_8x4')}."


TRAINABLE_LABELS = {
    "all_layers": "all layers",
    "top4": "top 4 layers (the demo's default)",
    "lora_r16_all": "LoRA r16 in all layers",
}


@renderer
def bench_trainable() -> str:
    result = load("bench_trainable")
    config, runs = result["config"], result["results"]["runs"]
    lines = [
        f"`python -m bench.bench_trainable --budget_s {config['budget_s']:g} --seeds "
        f"{' '.join(map(str, config['seeds']))} --threads {config['threads']}` ({result['machine']['date_utc']}; "
        f"{machine_line(result['machine'])}). Seconds until a rollout first reaches a reward >= 0.9, and the mean of "
        "the last five rollouts, per seed:",
        "",
        "| configuration | trainable parameters | rollouts in the budget | first >= 0.9 (s) | last five |",
        "|---|---|---|---|---|",
    ]
    for name, label in TRAINABLE_LABELS.items():
        mine = sorted((r for r in runs if r["config"] == name), key=lambda r: r["seed"])
        first = [next((f"{p['seconds']:.0f}" for p in r["curve"] if p["reward"] >= 0.9), "never") for r in mine]
        cells = [
            f"{mine[0]['trainable_params'] / 1e6:.1f} M",
            " / ".join(str(len(r["curve"])) for r in mine),
            " / ".join(first),
            " / ".join(f"{statistics.mean(p['reward'] for p in r['curve'][-5:]):.2f}" for r in mine),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@renderer
def all_layers_ablation() -> str:
    ablation = load("demo_ablation_all_layers")["summary"]["settings"]["moslim_best"]
    top4 = json.loads((ROOT / "docs/demo/run_b5d2ad1/report.json").read_text())["summary"]
    seeds = " / ".join(f"{ablation['per_seed'][str(s)]['accuracy']:.3f}" for s in ablation["seeds"])
    return (
        f"All layers, the default's two PPO epochs, on the conditional demo reward "
        f"(`bench/results/demo_ablation_all_layers.json`): {seeds} over {len(ablation['seeds'])} seeds (mean "
        f"{ablation['accuracy_mean']:.3f}) against the top 4 layers' "
        f"{' / '.join(f'{a:.3f}' for a in top4['moslim_accuracy_per_seed'])} in the same run's demo "
        "(`docs/demo/run_b5d2ad1/report.json`)."
    )


def overlap(a: list, b: list) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


@renderer
def hh_summary() -> str:
    """The HH-RLHF check in two sentences (docs/results.md, the README's table takes its numbers too)."""
    r = load("hh_rlhf_check")["results"]
    parts = []
    for name, b in r["backbones"].items():
        m, o = b["moslim"]["pairwise_accuracy"]["all"], b["openrlhf"]["pairwise_accuracy"]["all"]
        parts.append(
            f"{BACKBONE_NAMES.get(name, name).split(' (')[0]} {ci(m)} (MOSLIM) vs {ci(o)} (OpenRLHF pairwise)"
        )
    overlapping = all(
        overlap(b["moslim"]["pairwise_accuracy"]["all"]["ci95"], b["openrlhf"]["pairwise_accuracy"]["all"]["ci95"])
        for b in r["backbones"].values()
    )
    pairs = sorted(b["train_pairs"] for b in r["backbones"].values())
    return (
        f"HH-RLHF, {r['max_len']} tokens, {r['eval_pairs']['all']} held-out pairs from both test files, same pairs "
        f"and budget for both RMs ([benchmarks.md](benchmarks.md)): {'; '.join(parts)}. "
        + ("The intervals overlap" if overlapping else "Not every pair of intervals overlaps")
        + f"; at {pairs[0]}-{pairs[-1]} training pairs both are near chance."
    )


@renderer
def small_data_recipe() -> str:
    result = load("small_data_recipe")
    r, machine = result["results"], result["machine"]
    train, report = r["train_rm"], r["evaluate_rm"]
    seconds = [run["seconds"] for run in r["runs"]]
    # evaluate-rm's report, not train-rm's last evaluation: its intervals belong to its own accuracies. A report
    # without `max_length` was made before evaluate-rm read the trained length: it read the rows at 512 tokens.
    words = r["runs"][0]["command"].split()  # train-rm's command, as run
    trained = words[words.index("--data.max_len") + 1] if "--data.max_len" in words else "512"
    length = report.get("max_length", 512)
    heads = "; ".join(
        f"{name}: accuracy {m['accuracy']:.3f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}] vs "
        f"{m['majority_accuracy']:.3f} for the majority class, macro-F1 {m['macro_f1']:.3f}, NLL {m['nll']:.3f} vs "
        f"{m['prior_nll']:.3f} for the class prior ({m['n']} rows)"
        for name, m in report["heads"].items()
        if m["n"]
    )
    kept = train["selection"]
    return (
        f"Run as written on {r['rows']} rated rows from the HH-RLHF test splits (`python -m bench.small_data_recipe`,"
        f" {machine['date_utc']}; {machine_line(machine)}): train-rm {seconds[0] / 60:.1f} min for "
        f"{train['global_step']} optimizer steps on {train['train_rows']} rows (kept step {kept['best_step']}), "
        f"evaluate-rm {seconds[-1]:.0f} s on the {train['eval_rows']} held-out rows. Held out, as evaluate-rm "
        f"reports them (reading {length} tokens per row"
        + (
            f", not the {trained} trained at: it ran before evaluate-rm read the trained length"
            if str(length) != trained
            else ""
        )
        + f"): {heads}."
    )


DEMO_REPORT = ROOT / "docs/demo/report.json"  # the current default pipeline's latest run (its seeds: settings.seeds)
V7_REPORT = ROOT / "docs/demo/run_3ec2e72/report.json"  # demo_v7: the pipeline before joint requests, 3 seeds
MAKE_DEMO_REPORT = ROOT / "docs/demo/make_demo/report.json"  # `make demo` itself, timed on 2 idle cores
# The level-share experiments and the redraws of the RM, 3 seeds each: name -> (its report, its command, what it
# changed). The first is the baseline the others are compared with: the default they started from, before the top-up.
BALANCING_RUNS = {
    "no top-up": (ROOT / "docs/demo/no_top_up/report.json",
                  "python -m moslim_plugin demo --demo.top_up 0 --out runs/demo_default",
                  "lists asked in 2 of 3 format requests, no top-up (the default before the top-up)"),
    "balanced": (ROOT / "docs/demo/demo_balanced/report.json",
                 "python -m moslim_plugin demo --seeds 1 2 3 --demo.list_weight 4 --out runs/demo_balanced",
                 "lists asked in 4 of 5 format requests and the samples topped up to 15 %"),
    "top-up": (DEMO_REPORT, "python -m moslim_plugin demo --seeds 1 2 3 --out runs/demo_topup",
               "the samples topped up to 15 %; lists asked 2:1, as without it (the default now)"),
    "RM seed 1": (ROOT / "docs/demo/demo_rmseed1/report.json",
                  "python -m moslim_plugin demo --seeds 1 2 3 --demo.top_up 0 --demo.rm_seed 1 "
                  "--out runs/demo_rmseed1",
                  "no top-up, the shares left alone: the reward model drawn again (seed 1, the baseline's 0) from the "
                  "same samples, to see how far one RM draw moves the RL"),
    "top-up, RM seed 1": (ROOT / "docs/demo/demo_topup_rm1/report.json",
                          "python -m moslim_plugin demo --seeds 1 2 3 --demo.rm_seed 1 --out runs/demo_topup_rm1",
                          "the top-up on the second RM draw (seed 1)"),
    "balanced, RM seed 1": (ROOT / "docs/demo/demo_balanced_rm1/report.json",
                            "python -m moslim_plugin demo --seeds 1 2 3 --demo.list_weight 4 --demo.rm_seed 1 "
                            "--out runs/demo_balanced_rm1",
                            "balanced on the second RM draw (seed 1)"),
}  # fmt: skip
# The options over RM draws: option -> (its flags, its `BALANCING_RUNS` at --demo.rm_seed 0, 1); the first is the
# baseline. A run's RL seeds share one RM, so RL seeds apart cannot tell an option from an RM draw; the options are
# compared with the baseline draw by draw.
RM_DRAWS = {
    "no top-up": ("--demo.top_up 0", ("no top-up", "RM seed 1")),
    "top-up": ("--demo.top_up 0.15", ("top-up", "top-up, RM seed 1")),
    "balanced": ("--demo.top_up 0.15 --demo.list_weight 4", ("balanced", "balanced, RM seed 1")),
}
# The runs the docs promise but nobody has run yet: each one's region says so, with its command, until its results
# file exists (then `python -m bench.render_docs` renders the numbers in its place).
COMMANDS = {
    "demo_joint": "python -m moslim_plugin demo --seeds 1 2 3 --out runs/demo_joint",
    "make_demo": "time make demo",
    "numeral_probe": "python -m bench.numeral_probe --demo_dir runs/demo_joint",
    "demo_balancing": BALANCING_RUNS["top-up"][1],
    "demo_mappings": "python -m bench.demo_ablation --demo_dir runs/demo_default --seeds 1 2 3 --settings moslim_best "
    "mapping_expected_level mapping_target_logprob --out bench/results/demo_mappings.json",
    "demo_long": "python -m bench.demo_ablation --demo_dir runs/demo_default --seeds 1 --settings long "
    "--out bench/results/demo_long.json",
    "demo_seeds": "python -m bench.demo_ablation --demo_dir runs/demo_default --seeds 1 2 3 --settings moslim_best "
    "--out bench/results/demo_mappings.json",
}
MET = {True: "met", False: "**not met**"}


def measured_on(result: dict) -> str:
    """Which demo run an ablation file was measured on, when it is not the current default's (docs/demo/report.json):
    the copy of that run's report under docs/demo/ whose digest the file recorded."""
    from bench.demo_ablation import sha256  # the digest the ablation recorded

    digest = result["inputs"]["demo_report_sha256"]
    if DEMO_REPORT.is_file() and sha256(DEMO_REPORT) == digest:
        return ""
    for path in sorted((ROOT / "docs/demo").glob("*/report.json")):
        if sha256(path) == digest:
            where = path.with_suffix(".md").relative_to(ROOT / "docs")
            return f"Measured on an earlier default run, not the current one above: [its report]({where}). "
    raise ValueError(f"no report under docs/demo/ has the digest {digest} the results were measured on: copy that "
                     "run's report there")  # fmt: skip


def not_run(name: str) -> str:
    return f"**Not run yet.** The command: `{COMMANDS[name]}`."


def policy_label(name: str) -> str:
    return {"base": "starting policy"}.get(name, name)


def value_ci(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def monitor_text(monitor: dict) -> str:
    """The reward-hacking monitor in one line: per run and objective, RM = oracle on the rollouts, first -> last."""
    if not monitor:
        return "too few RL steps to compare a first and a last quarter"
    return "; ".join(
        f"{run}: " + ", ".join(f"{n} {m['first']:.3f} -> {m['last']:.3f}" + (" **falling**" if m["falling"] else "")
                              for n, m in mon.items())
        for run, mon in monitor.items()
    )  # fmt: skip


def make_demo_minutes(made: dict) -> tuple[dict, float]:
    """`make demo`'s stage timings and minutes from a run's report. `make demo` trains the first seed only; the stages
    run one after another, so a run of several seeds times it as its total less the later seeds' RL stages."""
    later = [f"MOSLIM RL seed {s}" for s in made["settings"]["seeds"][1:]]
    one = {k: v for k, v in made["timings_s"].items() if k not in later}
    return one, (one["total"] - sum(made["timings_s"][k] for k in later)) / 60


@renderer
def demo_joint() -> str:
    """The current default pipeline's run: every policy's headline metrics, each MOSLIM seed's paired differences,
    the targets, the level shares, the reward model and the hacking monitor (docs/demo/report.json)."""
    from bench.demo_ablation import demo_command
    from moslim_plugin.demo.report import MIN_LEVEL_SHARE, TARGETS, level_shares_text, paired_text

    if not DEMO_REPORT.is_file():
        return not_run("demo_joint")
    report = json.loads(DEMO_REPORT.read_text())
    s, settings = report["summary"], report["settings"]
    seeds = settings["seeds"]
    metrics = [m for m in METRIC_NAMES if m != "exact_all"]
    lines = [f"`{demo_command(report, 'runs/<name>')}`: {len(seeds)} seed{'s' * (len(seeds) != 1)} ("
             + ", ".join(map(str, seeds)) + f"), {settings['heldout_prompts']} held-out prompts, greedy, the oracle "
             "judges; report and plots in [docs/demo/report.md](demo/report.md).", ""]  # fmt: skip
    lines += ["| policy | " + " | ".join(f"{METRIC_NAMES[m]} [95 % CI]" for m in metrics) + " |",
              "|" + " --- |" * (1 + len(metrics))]  # fmt: skip
    lines += [f"| {policy_label(p)} | " + " | ".join(value_ci(h[m]) for m in metrics) + " |"
              for p, h in s["headline"].items()]  # fmt: skip
    lines += ["", "Paired differences (the same prompts and requests; bootstrap 95 % over prompts):", "",
              "| MOSLIM seed | minus | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " |",
              "|" + " --- |" * (2 + len(metrics))]  # fmt: skip
    lines += [f"| {p} | {ref} | " + " | ".join(paired_text(d[m]) for m in metrics) + " |"
              for p, against in s["paired"].items() for ref, d in against.items()]  # fmt: skip
    gain, single = s["targets"]["unseen_exact_all_gain"], s["targets"]["single_accuracy"]
    minutes = report["timings_s"]["total"] / 60

    def stages(timings):
        return ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items() if k != "total") + " min"

    same = MAKE_DEMO_REPORT == DEMO_REPORT
    if MAKE_DEMO_REPORT.is_file():
        made = json.loads(MAKE_DEMO_REPORT.read_text())
        seed, later = made["settings"]["seeds"][0], [f"MOSLIM RL seed {s}" for s in made["settings"]["seeds"][1:]]
        one, timed = make_demo_minutes(made)
        own = made["summary"]["paired"][f"MOSLIM seed {seed}"]["starting policy"]
        make_demo = f"{MET[timed <= TARGETS['demo_minutes']]} ({timed:.1f} min: {stages(one)}" + (
            (f"; this run is `make demo`'s command with `--seeds {' '.join(map(str, seeds))}`, timed, less the later "
             "seeds' RL)" if later else "; this run is `make demo`'s own command, timed)") if same else
            f"; [its report]({os.path.relpath(MAKE_DEMO_REPORT.with_suffix('.md'), ROOT / 'docs')}): seed {seed} "
            f"minus the starting policy, single-objective acc {paired_text(own['single_accuracy'])}, unseen exact-all "
            f"{paired_text(own['exact_all_unseen'])}; hacking monitor, "
            f"{monitor_text(made['summary']['agreement_monitor'])})"
        )  # fmt: skip
    else:
        make_demo = f"not measured yet (`{COMMANDS['make_demo']}` on an idle machine)"
        same = False
    lines += [
        "",
        f"- Target, unseen full combinations: every MOSLIM seed's exact-all rate >= the starting policy's + "
        f"{gain['target']:.2f}, the paired interval above 0: {MET[gain['met']]} "
        f"({'; '.join(f'seed {k} {paired_text(g)}' for k, g in gain['per_seed'].items())}).",
        f"- Target, single-objective accuracy (mean over MOSLIM seeds) >= {single['target']:.2f}: "
        f"{MET[single['met']]} ({single['value']:.3f}).",
        f"- Target, `make demo` (one seed) <= {TARGETS['demo_minutes']} min on 2 idle cores: "
        + make_demo
        + ("" if same and len(seeds) == 1 else f"; this run took {minutes:.0f} min for {len(seeds)} "
           f"seed{'s' * (len(seeds) != 1)} ("
           + stages(report["timings_s"]) + ")")
        + ".",
        f"- Level shares (every level should be >= {MIN_LEVEL_SHARE * 100:.0f} % of the policy's samples and of the "
        "RL rollouts): "
        + level_shares_text(s["level_shares"])
        + ".",
        "- Reward model, held-out macro-F1 per head: "
        + ", ".join(f"{n} {m['macro_f1']:.3f}" for n, m in s["rm_eval"].items())
        + f" (kept the evaluation at step {s['rm_selection']['best_step']} of "
        f"{len(s['rm_selection']['history'])} evaluations).",
        "- Hacking monitor, RM = oracle on the rollouts (first -> last quarter of the RL steps): "
        + monitor_text(s["agreement_monitor"]) + ".",
    ]  # fmt: skip
    added = run_seeds(DEMO_REPORT)
    if added:
        trained = "" if added["command"] is None else " on this run's RM and flags"
        lines += [
            f"- Seeds {', '.join(added['cells'])}{trained}: [every seed of the default](#every-seed-of-the-default)."
        ]
    elif len(seeds) < 3:
        lines += [f"- The 3-seed evidence run has not been run yet: `{COMMANDS['demo_joint']}`."]
    return "\n".join(lines)


@renderer
def numeral_probe() -> str:
    """The fooling test of the numbered-words RM (bench/results/numeral_probe.json)."""
    from bench.numeral_probe import MAX_CHANGED, MIN_MACRO_F1

    if not (RESULTS_DIR / "numeral_probe.json").is_file():
        return not_run("numeral_probe")
    result = load("numeral_probe")
    config = result["config"]
    rm, r = next(iter(result["results"].items()))
    fooled = sorted(r["fooled_per_numeral"].items(), key=lambda kv: -kv[1])[:5]
    f1 = r["length_macro_f1_heldout"]
    share = r["changed_share"]
    text = (
        f"`python -m bench.numeral_probe {' '.join(config['command'])}` ({result['machine']['date_utc']}), the RM in "
        f"`{rm}`: each numeral {config['numerals'][0]}-{config['numerals'][1]} appended and prepended to each of the "
        f"run's {r['short_answers']} samples short enough to stay at the shortest length level with one word more "
        f"({r['edited_answers']} edited answers): the predicted length level changed for **{r['changed']}** "
        f"({100 * share:.2f} %; target <= {100 * MAX_CHANGED:g} %: {MET[share <= MAX_CHANGED]})"
    )
    text += f", most often for {', '.join(f'{k} ({v})' for k, v in fooled)}" if fooled else ""
    return (
        text
        + f". The length head's held-out macro-F1: **{f1:.3f}** (target >= {MIN_MACRO_F1}: {MET[f1 >= MIN_MACRO_F1]})."
    )


@renderer
def demo_mappings() -> str:
    """The mapping ablation: the demo's flags and RM under each built-in mapping (bench/results/demo_mappings.json)."""
    from bench.demo_ablation import verdict_text
    from moslim_plugin.demo.report import paired_text

    result = load("demo_mappings") if (RESULTS_DIR / "demo_mappings.json").is_file() else {"cells": {}}
    if not any(name.startswith("mapping_") for name in result["cells"]):  # the file may hold the default's seeds only
        return not_run("demo_mappings")
    rows = {n: s for n, s in result["summary"]["settings"].items() if n == "moslim_best" or n.startswith("mapping_")}
    metrics = ("single_accuracy", "joint_accuracy", "exact_all_seen", "exact_all_unseen")
    lines = [f"{measured_on(result)}`{result['commands'][-1]}`:", "",
             "| mapping | seeds | " + " | ".join(f"{METRIC_NAMES[m]}, mean" for m in metrics)
             + " | unseen exact-all minus the starting policy, per seed | single acc minus the `moslim` mapping, per "
             "seed |", "|" + " --- |" * (4 + len(metrics))]  # fmt: skip
    for name, s in rows.items():
        cells = result["cells"][name]
        mapping = next(iter(cells.values()))["mapping"]

        def per_seed(against, metric, cells=cells):
            return "; ".join(f"{seed}: {paired_text(c['paired'][against][metric])}" for seed, c in cells.items()
                             if metric in c["paired"].get(against, {})) or "-"  # fmt: skip

        lines.append(
            f"| `{mapping}` | {', '.join(s['seeds'])} | "
            + " | ".join(f"{s['headline_mean'][m]:.3f}" for m in metrics)
            + f" | {per_seed('starting policy', 'exact_all_unseen')} | "
            + ("-" if mapping == result["demo_settings"]["mapping"] else per_seed("demo MOSLIM, same seed",
                                                                                  "single_accuracy"))
            + " |"
        )  # fmt: skip
    monitor = ("Hacking monitor, RM = oracle on the rollouts (first -> last quarter of the RL steps; `moslim` seed 1 "
               f"is the demo's run, above): {monitor_text(result['agreement_monitor'])}.")  # fmt: skip
    verdict = result["summary"].get("mapping")  # None while the demo's own mapping has no cells beside the others
    lines += ["", verdict_text(verdict) if verdict else "No verdict: the file has no cells of the demo's mapping."]
    return "\n".join(lines + ["", monitor])


def report_seed_cells(report: dict) -> dict:
    """A demo report's MOSLIM seeds as ablation-like cells: seed -> headline, paired differences, RL history."""
    s = report["summary"]
    return {str(seed): {"headline": s["headline"][f"MOSLIM seed {seed}"], "paired": s["paired"][f"MOSLIM seed {seed}"],
                        "history": report["training"][f"MOSLIM seed {seed}"]}
            for seed in report["settings"]["seeds"]}  # fmt: skip


def run_seeds(path: Path) -> dict | None:
    """Every seed of the demo run whose report is `path`: its own when it trained several (command None), else the
    ablation's `moslim_best` cells when they were trained on that very run with its own flags and mapping
    (bench/results/demo_mappings.json; seed 1 is then the run's own policy), with the demo's targets judged over them;
    None otherwise."""
    from bench.demo_ablation import sha256
    from moslim_plugin.demo.report import targets

    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if len(report["settings"]["seeds"]) > 1:
        return {"cells": report_seed_cells(report), "targets": report["summary"]["targets"], "command": None,
                "heldout_prompts": report["settings"]["heldout_prompts"]}  # fmt: skip
    if not (RESULTS_DIR / "demo_mappings.json").is_file():
        return None
    result = load("demo_mappings")
    cells, settings = result["cells"].get("moslim_best"), result["demo_settings"]
    digest, flags = sha256(path), settings["rl_flags"].items()
    if not cells or result["inputs"]["demo_report_sha256"] != digest:
        return None  # trained on another run
    if any(
        c["mapping"] != settings["mapping"] or any(c["rl_flags"].get(k) != v for k, v in flags) for c in cells.values()
    ):
        return None  # another --best_flags: not the run's seeds
    summary = {
        "paired": {f"MOSLIM seed {seed}": c["paired"] for seed, c in cells.items()},
        "moslim_accuracy_mean": statistics.mean(c["metrics"]["mean"]["accuracy"] for c in cells.values()),
    }
    return {"cells": cells, "targets": targets(summary, list(cells)), "command": result["commands"][-1],
            "heldout_prompts": settings["heldout_prompts"]}  # fmt: skip


@renderer
def demo_seeds() -> str:
    """The default's MOSLIM RL on every seed (`run_seeds`): each seed's paired differences against the starting
    policy and RiC, the demo's targets judged over the seeds (when they are not the run's own) and the rarest level of
    each seed's rollouts."""
    from moslim_plugin.demo.report import paired_text

    seeds = run_seeds(DEMO_REPORT)
    if seeds is None:
        return not_run("demo_seeds")
    cells, verdict = seeds["cells"], seeds["targets"]
    gain, single = verdict["unseen_exact_all_gain"], verdict["single_accuracy"]
    metrics = ("single_accuracy", "exact_all_seen", "exact_all_unseen")
    where = ("the run above, which trained every seed itself" if seeds["command"] is None else
             f"`{seeds['command']}` (the demo run's own flags, RM, samples and baselines; seed 1 is its own policy, "
             "reused)")  # fmt: skip
    lines = [f"{where}: {len(cells)} seed{'s' * (len(cells) != 1)}, {seeds['heldout_prompts']} held-out prompts, "
             "greedy, the oracle judges.", "",
             "| MOSLIM seed | " + " | ".join(f"{METRIC_NAMES[m]} [95 % CI]" for m in metrics)
             + " | unseen exact-all minus the starting policy | minus RiC | seen exact-all minus the starting policy "
             "| single acc minus the starting policy |", "|" + " --- |" * (5 + len(metrics))]  # fmt: skip
    for seed, c in cells.items():
        ref = c["paired"]
        lines.append(f"| {seed} | " + " | ".join(value_ci(c["headline"][m]) for m in metrics)
                     + f" | {paired_text(ref['starting policy']['exact_all_unseen'])} | "
                     + (paired_text(ref["RiC"]["exact_all_unseen"]) if "RiC" in ref else "-")
                     + f" | {paired_text(ref['starting policy']['exact_all_seen'])}"
                     + f" | {paired_text(ref['starting policy']['single_accuracy'])} |")  # fmt: skip
    lines += [""]
    if seeds["command"] is not None:  # a run's own seeds have their targets in its region (demo_joint)
        lines += [
            f"- Target, unseen full combinations: every MOSLIM seed's exact-all rate >= the starting policy's + "
            f"{gain['target']:.2f}, the paired interval above 0: {MET[gain['met']]} "
            f"({sum(g['met'] for g in gain['per_seed'].values())} of {len(gain['per_seed'])} seeds).",
            f"- Target, single-objective accuracy (mean over MOSLIM seeds) >= {single['target']:.2f}: "
            f"{MET[single['met']]} ({single['value']:.3f}).",
        ]  # fmt: skip
    # The demo's own seed, when its cell has no history: its report's shares.
    lines += rarest_levels(cells, json.loads(DEMO_REPORT.read_text())["summary"]["level_shares"])
    return "\n".join(lines)


def rarest_levels(cells: dict, report_shares: dict) -> list[str]:
    """A line per kind of rollout share: each seed's rarest level, from the per-step shares its RL logged (a cell
    without a history: `report_shares`), marked below the bar."""
    from moslim_plugin.demo.oracle import demo_spec
    from moslim_plugin.demo.report import LEVEL_SHARE_LABELS, MIN_LEVEL_SHARE, level_shares

    lines = []
    for where in ("rl_rollouts", "rl_rollouts_asking"):
        rarest = []
        for seed, c in cells.items():
            shares = (level_shares(demo_spec(), [], {seed: c["history"]}) if c.get("history")
                      else report_shares).get(where)  # fmt: skip
            if shares:  # runs before the asking shares were logged have none
                level = min(shares, key=shares.get)
                rarest.append(f"seed {seed} {level} {shares[level]:.3f}"
                              + (" **below**" if shares[level] < MIN_LEVEL_SHARE else ""))  # fmt: skip
        if rarest:
            lines.append(f"- The rarest level per seed ({LEVEL_SHARE_LABELS[where]}; bar: {MIN_LEVEL_SHARE * 100:.0f} "
                         "%): " + "; ".join(rarest) + ".")  # fmt: skip
    return lines


BALANCING_METRICS = ("single_accuracy", "exact_all_unseen")


def balancing_runs() -> dict:
    """`BALANCING_RUNS` whose report is there (with every seed's cells): name -> (run_seeds, report); empty without
    the baseline or without a run beside it."""
    seeds = {name: run_seeds(path) for name, (path, _, _) in BALANCING_RUNS.items()}
    found = {name: (seeds[name], json.loads(path.read_text())) for name, (path, _, _) in BALANCING_RUNS.items()
             if seeds[name]}  # fmt: skip
    return found if next(iter(BALANCING_RUNS)) in found and len(found) > 1 else {}


def seeds_apart(found: dict, run: str, sign: int) -> list[str]:
    """The `BALANCING_METRICS` on which every seed of `run` is below (sign -1) or above (+1) every baseline seed."""
    values = {name: {m: [sign * c["headline"][m]["value"] for c in seeds["cells"].values()] for m in BALANCING_METRICS}
              for name, (seeds, _) in found.items()}  # fmt: skip
    baseline = values[next(iter(found))]
    return [METRIC_NAMES[m] for m in BALANCING_METRICS if min(values[run][m]) > max(baseline[m])]


def run_means(seeds: dict) -> dict:
    """A run's mean over its seeds (`run_seeds`) of each of `BALANCING_METRICS`."""
    return {m: statistics.mean(c["headline"][m]["value"] for c in seeds["cells"].values()) for m in BALANCING_METRICS}


def balancing_means(found: dict) -> str:
    """Each run's mean over seeds of `BALANCING_METRICS`, in one line."""
    return "; ".join(f"{name} " + " / ".join(f"{v:.3f}" for v in run_means(seeds).values())
                     for name, (seeds, _) in found.items())  # fmt: skip


def rm_draw_verdict(found: dict) -> dict | None:
    """The options of `RM_DRAWS` against the baseline (the rule fixed before the second draw's results existed):
    each draw's mean over its RL seeds, per control metric, to 3 decimals as the docs print them. An option is adopted
    when its samples and all its rollouts meet the level-share bar on every draw, unless on some metric its mean is
    below the baseline's on every draw; of several, the one with the higher mean unseen exact-all rate becomes the
    default.
    None until the baseline and an option have every draw there."""
    from moslim_plugin.demo.pipeline import build_parser
    from moslim_plugin.demo.report import MIN_LEVEL_SHARE

    done = [option for option, (_, runs) in RM_DRAWS.items() if all(run in found for run in runs)]
    baseline = next(iter(RM_DRAWS))
    if baseline not in done or len(done) < 2:
        return None
    means, options = {}, {}
    for option in done:
        flags, runs = RM_DRAWS[option]
        want = vars(build_parser().parse_args(flags.split()))
        for draw, run in enumerate(runs):  # a run filed under another option or draw would decide for the wrong one
            report = found[run][1]
            ran = {"demo.rm_seed": report["settings"]["rl_flags"].get("demo.rm_seed", 0),  # reports before the flag
                   "demo.list_weight": report["settings"]["request_weights"]["format"][1],
                   "demo.top_up": (report["summary"].get("sample_top_up") or {}).get("share", 0.0)}  # fmt: skip
            if ran != {**{k: want[k] for k in ran}, "demo.rm_seed": draw}:
                raise ValueError(f"RM_DRAWS files {run!r} under {option!r} at RM seed {draw}, but it ran {ran}")
        draws = [run_means(found[run][0]) for run in runs]
        means[option] = {m: [round(d[m], 3) for d in draws] for m in BALANCING_METRICS}
        if option != baseline:
            worse = [m for m in BALANCING_METRICS if all(a < b for a, b in zip(means[option][m], means[baseline][m]))]
            bar = all(share >= MIN_LEVEL_SHARE for run in runs for where in ("samples", "rl_rollouts")
                      for share in found[run][1]["summary"]["level_shares"][where].values())  # fmt: skip
            options[option] = {"flags": flags, "worse_on": worse, "bar_met": bar, "adopt": bar and not worse}
    adopted = [option for option, v in options.items() if v["adopt"]]
    best = max(adopted, key=lambda o: statistics.mean(means[o]["exact_all_unseen"])) if adopted else baseline
    return {"baseline": baseline, "means": means, "options": options, "best": best}


def rm_draw_text(verdict: dict) -> str:
    baseline, means = verdict["baseline"], verdict["means"]
    names = " / ".join(METRIC_NAMES[m] for m in BALANCING_METRICS)
    draws = "; ".join(f"{name}: " + ", ".join(
        f"RM seed {draw} " + " / ".join(f"{means[name][m][draw]:.3f}" for m in BALANCING_METRICS)
        for draw in range(len(means[name]["exact_all_unseen"]))) for name in means)  # fmt: skip
    lines = [f"By RM draw, each draw's mean over its RL seeds ({names}): {draws}.", "",
             "The rule, fixed before the second draw's results existed: an option replaces "
             f"{baseline} when its samples and all its rollouts meet the bar on both draws, unless on some metric its "
             f"mean is below {baseline}'s on every draw; of several, the higher mean unseen exact-all "
             "rate."]  # fmt: skip
    for option, v in verdict["options"].items():
        worse = ", ".join(METRIC_NAMES[m] for m in v["worse_on"])
        lines.append(f"- {option} (`{v['flags']}`): bar {MET[v['bar_met']]}; below {baseline} on every draw on "
                     f"{worse or 'no metric'}: {'adopted' if v['adopt'] else 'not adopted'}.")  # fmt: skip
    best = verdict["best"]
    lines += ["", f"**{best} becomes the default (`{RM_DRAWS[best][0]}`).**" if best != baseline
              else f"**{baseline} stays the default.**"]  # fmt: skip
    return "\n".join(lines)


@renderer
def demo_balancing() -> str:
    """The level-share experiments (`BALANCING_RUNS`), every seed of each: every run answers the same held-out items
    with the same starting policy's answers, so each seed's paired difference against it compares the runs. Per run
    besides the baseline: the metrics on which every one of its seeds is below (or above) every baseline seed; per
    run: its level shares and each seed's rarest level."""
    from moslim_plugin.demo.report import level_shares_text, paired_text

    found = balancing_runs()
    if not found:
        return not_run("demo_balancing")
    baseline = next(iter(found))
    cells = {name: seeds["cells"] for name, (seeds, _) in found.items()}
    metrics = BALANCING_METRICS
    lines = ["Greedy, 64 held-out prompts, the oracle judges. The runs, 3 seeds each:", ""]
    lines += [f"- {name}: {what}; `{command}`; [its report]({path.with_suffix('.md').relative_to(ROOT / 'docs')})"
              + (f", seeds {', '.join(list(cells[name])[1:])} by `{found[name][0]['command']}`"
                 if found[name][0]["command"] else "") + "."
              for name, (path, command, what) in BALANCING_RUNS.items() if name in found]  # fmt: skip
    lines += ["", "| run | seed | " + " | ".join(METRIC_NAMES[m] for m in metrics)
              + " | " + " | ".join(f"{METRIC_NAMES[m]} minus the starting policy" for m in metrics) + " |",
              "|" + " --- |" * (2 + 2 * len(metrics))]  # fmt: skip
    for run, by_seed in cells.items():
        for seed, c in by_seed.items():
            start = c["paired"]["starting policy"]
            lines.append(f"| {run} | {seed} | " + " | ".join(value_ci(c["headline"][m]) for m in metrics) + " | "
                         + " | ".join(paired_text(start[m]) for m in metrics) + " |")  # fmt: skip
    lines += ["", "Mean over seeds (" + " / ".join(METRIC_NAMES[m] for m in metrics) + "): "
              + balancing_means(found) + "."]  # fmt: skip
    verdict = rm_draw_verdict(found)
    lines += ["", rm_draw_text(verdict)] if verdict else []
    for run, (_, report) in found.items():
        line = f"**{run}**: "
        if run != baseline:
            below, above = seeds_apart(found, run, -1), seeds_apart(found, run, 1)
            line += (f"every seed below every {baseline} seed on {', '.join(below) or 'neither metric'}, above on "
                     f"{', '.join(above) or 'neither metric'}. ")  # fmt: skip
        top = report["summary"].get("sample_top_up")
        seeds = report["settings"]["seeds"]
        of = "all seeds" if len(seeds) > 1 else f"seed {seeds[0]}"  # a one-seed report's shares are its seed's
        line += f"Level shares ({of}): {level_shares_text(report['summary']['level_shares'])}." + (
            f" The top-up generated {top['generated']} answers and kept "
            + ", ".join(f"{v} of {k}" for k, v in top["kept"].items()) + "." if top else "")  # fmt: skip
        lines += ["", line, *rarest_levels(cells[run], report["summary"]["level_shares"])]
    return "\n".join(lines)


@renderer
def demo_long() -> str:
    """The long run: the demo's flags with more RL steps on one seed, a curve point every few steps, and the final
    policy's paired differences (bench/results/demo_long.json)."""
    from moslim_plugin.demo.report import paired_text

    if not (RESULTS_DIR / "demo_long.json").is_file():
        return not_run("demo_long")
    result = load("demo_long")
    seed, cell = next(iter(result["cells"]["long"].items()))
    curve_metrics = ("single_accuracy", "exact_all_seen", "exact_all_unseen")
    lines = [f"{measured_on(result)}`{result['commands'][-1]}` (seed {seed}; `--long_flags` "
             f"`{result['inputs']['long_flags']}`), greedy, "
             "the curve on the first held-out prompts:", "",
             "| RL step | " + " | ".join(f"{METRIC_NAMES[m]} [95 % CI]" for m in curve_metrics) + " |",
             "|" + " --- |" * (1 + len(curve_metrics))]  # fmt: skip
    points = [h for h in cell["history"] if "curve" in h]
    lines += [f"| {h['step']} | " + " | ".join(value_ci(h["curve"][m]) if m in h["curve"] else "-"
                                              for m in curve_metrics) + " |" for h in points]  # fmt: skip
    lines += ["", f"At the end, on all {result['demo_settings']['heldout_prompts']} held-out prompts: "
              + ", ".join(f"{METRIC_NAMES[m]} {value_ci(cell['headline'][m])}" for m in curve_metrics) + ". "
              + "Paired on the same items: " + "; ".join(
                  f"minus {ref}: " + ", ".join(f"{METRIC_NAMES[m]} {paired_text(d[m])}" for m in curve_metrics)
                  for ref, d in cell["paired"].items()) + ".",
              "", "Hacking monitor, RM = oracle on the rollouts (first -> last quarter of the RL steps): "
              + monitor_text(result["agreement_monitor"]) + "."]  # fmt: skip
    return "\n".join(lines)


def headline(name: str, metric: str) -> float:
    return next(h["value"] for h in load(name)["headline"] if h["metric"] == metric)


@renderer
def readme_results() -> str:
    """The README's results in brief: one row per result, every number from its JSON."""
    from bench.demo_ablation import demo_command
    from moslim_plugin.demo.pipeline import build_parser
    from moslim_plugin.demo.report import TARGETS, paired_text

    v7 = json.loads(V7_REPORT.read_text())["summary"]
    tagged = load("demo_ablation_v7_base_tagged")["summary"]
    relabel, best = (load("demo_ablation")["summary"]["settings"][n] for n in ("moslim_relabel", "moslim_best"))
    v7_overlap = any(
        overlap(c, v7["base_accuracy_ci95"]) or overlap(c, v7["ric_accuracy_ci95"]) for c in v7["moslim_accuracy_ci95"]
    )
    if DEMO_REPORT.is_file():
        report = json.loads(DEMO_REPORT.read_text())
        s, seeds = report["summary"], report["settings"]["seeds"]
        added = run_seeds(DEMO_REPORT)  # every seed of the default when there
        verdict = added["targets"] if added else s["targets"]
        gain, single = verdict["unseen_exact_all_gain"], verdict["single_accuracy"]
        seeds = list(gain["per_seed"]) or seeds
        paired = {seed: c["paired"] for seed, c in added["cells"].items()} if added else {
            str(seed): s["paired"][f"MOSLIM seed {seed}"] for seed in seeds}  # fmt: skip
        joint = (
            f"demo, joint requests, {len(seeds)} seed{'s' * (len(seeds) != 1)} on one RM draw: exact-all on unseen "
            "and on seen combinations, MOSLIM minus the starting policy (paired 95 % CI); single-objective acc",
            f"unseen {'; '.join(paired_text(g) for g in gain['per_seed'].values())} (target +{gain['target']:.2f}, "
            f"interval above 0: {MET[gain['met']]}); seen "
            + "; ".join(paired_text(p["starting policy"]["exact_all_seen"]) for p in paired.values())
            + f"; {single['value']:.3f} (target {single['target']:.2f}: {MET[single['met']]})",
            "[results](docs/results.md#joint-control-the-current-default-pipeline): "
            f"`{demo_command(report, 'runs/<name>')}`"
            + (f", then `{added['command']}`" if added and added["command"] else ""),
        )
        rm, rm_run = s["rm_eval"], "current default"
    else:
        joint = (
            "demo, joint requests (the current default)",
            "not run yet",
            f"[results](docs/results.md#joint-control-the-current-default-pipeline): `{COMMANDS['demo_joint']}`",
        )
        rm, rm_run = v7["rm_eval"], "demo_v7"
    mappings = (RESULTS_DIR / "demo_mappings.json").is_file() and load("demo_mappings")["summary"].get("mapping")
    if mappings:
        default, chosen = mappings["default"], mappings["best"]
        # A mapping whose every seed beat the default's on one metric but not on the other does not replace it.
        partial = [f"`{m}` beat it on every seed in {METRIC_NAMES[metric]} only"
                   for m, apart in mappings["seeds_apart_above_default"].items() if m != chosen
                   for metric, up in apart.items() if up]  # fmt: skip
        mapping_row = (
            f"demo, the built-in mappings, seeds {', '.join(mappings['seeds'])} each, same RM and RL budget: mean "
            "single-objective acc / unseen exact-all",
            "; ".join(f"`{m}` {mean['single_accuracy']:.3f} / {mean['exact_all_unseen']:.3f}"
                      for m, mean in mappings["mean"].items())
            + (f": `{chosen}` trains control best" if chosen != default else f": `{default}` stays the default"
               + "".join(f"; {text}" for text in partial)),
            "[results](docs/results.md#mapping-ablation)",
        )  # fmt: skip
    else:
        mapping_row = ("demo, the built-in mappings", "not run yet",
                       f"[results](docs/results.md#mapping-ablation): `{COMMANDS['demo_mappings']}`")  # fmt: skip
    found = balancing_runs()
    verdict = rm_draw_verdict(found) if found else None
    draws, second_row = RM_DRAWS[verdict["best"]][1] if verdict else (), None
    if draws and BALANCING_RUNS[draws[0]][0] == DEMO_REPORT:  # the default's second RM draw
        second = draws[1]
        s2 = found[second][1]["summary"]
        second_row = (
            "demo, the same default on a second RM draw (`--demo.rm_seed 1`), 3 seeds: unseen exact-all minus the "
            "starting policy (paired 95 % CI); single-objective acc",
            "; ".join(paired_text(g) for g in s2["targets"]["unseen_exact_all_gain"]["per_seed"].values())
            + f"; {s2['targets']['single_accuracy']['value']:.3f}",
            f"[results](docs/results.md#balancing-the-level-shares): `{BALANCING_RUNS[second][1]}`",
        )
    balancing_row = (
        "demo, the level-share options and the earlier default (no top-up), 3 seeds per run: mean "
        + " / ".join(METRIC_NAMES[m] for m in BALANCING_METRICS),
        balancing_means(found)
        + "".join(
            f"; {run}: every seed below every {next(iter(found))} seed on {', '.join(below)}"
            for run in list(found)[1:]
            if (below := seeds_apart(found, run, -1))
        )
        + (f"; over RM draws: {verdict['best']} is the default" if verdict else "")
        if found
        else "not run yet",
        "[results](docs/results.md#balancing-the-level-shares)"
        + ("" if found else f": `{COMMANDS['demo_balancing']}`"),
    )
    recipe = load("small_data_recipe")["results"]
    hh = load("hh_rlhf_check")["results"]["backbones"]
    hh_overlap = all(
        overlap(b["moslim"]["pairwise_accuracy"]["all"]["ci95"], b["openrlhf"]["pairwise_accuracy"]["all"]["ci95"])
        for b in hh.values()
    )
    hh_cells = " / ".join(
        f"{b['moslim']['pairwise_accuracy']['all']['accuracy']:.2f} vs "
        f"{b['openrlhf']['pairwise_accuracy']['all']['accuracy']:.2f}"
        for b in hh.values()
    )
    timed_at = "[results](docs/results.md#joint-control-the-current-default-pipeline)"
    if MAKE_DEMO_REPORT.is_file():
        made = json.loads(MAKE_DEMO_REPORT.read_text())
        minutes = make_demo_minutes(made)[1]
        # A timing from before the top-up became the default says so: the top-up adds its answers and their RM rows.
        before = made["summary"].get("sample_top_up") is None and build_parser().get_default("demo.top_up") > 0
        timing_row = (f"`make demo` (one seed) on 2 idle cores, target {TARGETS['demo_minutes']} min",
                      f"{minutes:.1f} min: {MET[minutes <= TARGETS['demo_minutes']]}"
                      + ("; timed before the default topped up its samples" if before else ""),
                      f"{timed_at}: `time make demo`")  # fmt: skip
    else:
        timing_row = ("`make demo` (one seed) on 2 idle cores", "not timed yet",
                      f"{timed_at}: `{COMMANDS['make_demo']}`")  # fmt: skip
    rows = [
        joint,
        *([second_row] if second_row else []),
        timing_row,
        mapping_row,
        balancing_row,
        ("demo before joint requests (demo_v7), single-objective acc, 3 seeds: MOSLIM vs starting policy vs RiC",
         f"{v7['moslim_accuracy_mean']:.3f} vs {v7['base_accuracy']:.3f} vs {v7['ric_accuracy']:.3f}"
         + ("; intervals overlap" if v7_overlap else ""),
         "[results](docs/results.md#before-joint-requests-demo_v7)"),
        ("demo, the directive as a plain sentence vs a tagged record (starting policy)",
         f"{tagged['settings']['base_natural']['accuracy_mean']:.3f} vs "
         f"{tagged['settings']['base_tagged']['accuracy_mean']:.3f}",
         "[results](docs/results.md#ablation-on-demo_v7): `python -m bench.demo_ablation`"),
        (f"demo reward model ({rm_run}), held-out macro-F1 per head (" + " / ".join(rm) + ")",
         " / ".join(f"{m['macro_f1']:.3f}" for m in rm.values()),
         "[results](docs/results.md#the-demos-reward-model): `python -m bench.demo_rm_check`"),
        (f"a first reward model on {recipe['rows']} rated rows, on a CPU: the recipe above, run as written",
         f"{sum(run['seconds'] for run in recipe['runs']) / 60:.0f} min",
         "[above](#a-first-reward-model-on-a-laptop-small-data-on-a-cpu): `python -m bench.small_data_recipe`"),
        ("scoring time, multi-head RM / OpenRLHF's scalar RM (MiniLM)",
         f"{headline('bench_heads', 'minilm: time moslim/stock RM'):.2f}",
         "[benchmarks](docs/benchmarks.md): `python -m bench.bench_heads`"),
        ("`serve-reward` / OpenRLHF's `serve_rm` throughput, 64 clients",
         f"{headline('bench_server', 'throughput moslim/serve_rm, 64 clients'):.1f}x",
         "[benchmarks](docs/benchmarks.md): `python -m bench.bench_server`"),
        ("HH-RLHF held-out pairwise accuracy, MOSLIM vs OpenRLHF pairwise RM (" + " / ".join(
            SHORT_NAMES.get(n, n) for n in hh) + ")",
         hh_cells + ("; intervals overlap" if hh_overlap else ""),
         "[results](docs/results.md#reward-models-on-real-preference-data): `python -m bench.hh_rlhf_check`"),
        ("cross-directive relabelling vs the demo's RL setting (demo_v6)",
         f"{relabel['accuracy_mean']:.3f} vs {best['accuracy_mean']:.3f}: retired",
         "[relabelling](docs/relabelling.md)"),
    ]  # fmt: skip
    lines = ["| result | number | doc and command |", "| --- | --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


@renderer
def rules_cost() -> str:
    """docs/rules.md: what a rule costs (bench_rules) beside what demo_v7's learned heads cost (its report: the last
    full demo run with learned length and format heads and its RM's held-out metrics)."""
    result, demo = load("bench_rules"), json.loads(V7_REPORT.read_text())
    r, t = result["results"], demo["timings_s"]
    rm = demo["summary"]["rm_eval"]
    where = f"`{V7_REPORT.relative_to(ROOT)}`"
    return "\n".join([
        f"- **labelled data**: demo_v7 labels its {demo['settings']['size']['samples']} policy samples and edited "
        f"copies of them to train its heads ({rm['length']['n']} rows held out to evaluate them);",
        f"- **capacity and time**: every head shares the backbone, so a hard one (word counts) competes with the "
        f"others, and the reward model is trained and run for it: demo_v7's RM stage took {t['rm'] / 60:.0f} of the "
        f"{t['total'] / 60:.0f} minutes of its {len(demo['settings']['seeds'])}-seed run ({where});",
        "- **a ceiling**: read as plain text, the demo's length head could not count words at the band edges "
        "whatever the pooling or backbone, and needed numbered words (docs/results.md, \"Why the demo's "
        f"defaults\"); with them demo_v7's reached held-out macro-F1 {rm['length']['macro_f1']:.3f};",
        "- **reward hacking**: a learned head can be fooled where a rule cannot (the numeral above).",
        "",
        f"A rule costs microseconds of Python per sample and nothing else: the demo's two rules took "
        f"{r['rules']['median_us_per_sample']:.0f} us per sample and a rules-only `Scorer.score` "
        f"{r['rules_scorer']['median_us_per_sample']:.0f} us, "
        f"{100 * r['rules']['median_us_per_sample'] / r['rm_classify']['median_us_per_sample']:.2f} % of what the "
        f"MiniLM reward model's classify took on the same HH-RLHF pairs (`python -m bench.bench_rules`, "
        f"{result['machine']['date_utc']}; {machine_line(result['machine'])}).",
    ])  # fmt: skip


DEMO_RULES_COMMANDS = """```bash
python -m moslim_plugin demo --threads 1 --out runs/demo_default        # learned heads: the default demo
python -m moslim_plugin demo --threads 1 --out runs/demo_rules --demo.rules length,format
python -m bench.compare_demo_runs --a runs/demo_default --b runs/demo_rules   # bench/results/demo_rules.json
python -m bench.render_docs                                                   # renders it here
```"""


@renderer
def demo_rules(path=None) -> str:
    """docs/rules.md: the demo with exact rules for length and format (b) against learned heads (a), from
    bench/compare_demo_runs.py's JSON; until it exists, says plainly that it has not been measured."""
    path = Path(path or RESULTS_DIR / "demo_rules.json")
    if not path.is_file():
        return (
            "**Not measured yet.** The two runs and their comparison have not been run to the end on the current "
            "demo; these are the commands (one seed each, the default budget; copy the starting policy's cached "
            "evaluation `eval_base_*.json` from the first run's folder into the second's to skip evaluating it "
            "again):\n\n" + DEMO_RULES_COMMANDS
        )
    result = json.loads(path.read_text())
    runs, diff, head = result["runs"], result["b_minus_a"], result["headline"]
    names = list(result["rm_eval"]["a"])
    metrics = ["single_accuracy", "exact_all_seen", "exact_all_unseen", *names]
    lines = [
        f"Measured (`{result['command']}`, {result['machine']['date_utc']}): a = learned heads "
        f"(`{runs['a']['dir']}`, {runs['a']['minutes']:.0f} min), b = rules for {', '.join(runs['b']['rules'])} "
        f"(`{runs['b']['dir']}`, {runs['b']['minutes']:.0f} min; wall times on a shared machine, not a speed "
        f"comparison), seeds {result['seeds']}, the same samples, prompts, requests and RL budget. Greedy answers to "
        "the held-out prompts judged by the oracle; b - a with paired bootstrap 95 % intervals over prompts; per "
        "objective: single-objective requests. "
        + (
            "One RL run per side: the intervals cover the prompts, not how much RL runs of other seeds vary."
            if len(result["seeds"]) == 1
            else "The MOSLIM rows are per seed."
        ),
        "",
        "| policy | single-objective acc, a / b | " + " | ".join(f"b - a: {m}" for m in metrics) + " |",
        "|" + " --- |" * (2 + len(metrics)),
    ]
    for name, d in diff.items():
        cells = [f"{d[m]['diff']:+.3f} [{d[m]['ci95'][0]:+.3f}, {d[m]['ci95'][1]:+.3f}]" if m in d else "-"
                 for m in metrics]  # fmt: skip
        acc = " / ".join(f"{head[run][name]['single_accuracy']['value']:.3f}" for run in ("a", "b"))
        lines.append(f"| {policy_label(name)} | {acc} | " + " | ".join(cells) + " |")
    lines += ["", "Reward model against the oracle (accuracy of its most likely level; a rule is exact):", ""]
    for run in ("a", "b"):
        held = ", ".join(f"{n} {m['macro_f1']:.3f}" for n, m in result["rm_eval"][run].items())
        answers = "; ".join(f"{policy_label(p)}: " + ", ".join(f"{n} {m['accuracy']:.3f}" for n, m in a.items())
                            for p, a in result["rm_agreement"][run].items() if a)  # fmt: skip
        monitor = "; ".join(f"{p}: " + ", ".join(f"{n} {m['first']:.3f} -> {m['last']:.3f}" for n, m in mon.items())
                            for p, mon in result["hacking_monitor"][run].items())  # fmt: skip
        lines.append(f"- run {run}: held-out rows, macro-F1 {held}. On the policies' held-out answers: {answers}. "
                     f"On the RL rollouts, first -> last quarter of the steps: {monitor}.")  # fmt: skip
    return "\n".join(lines)


def render_text(text: str, where: str = "") -> str:
    def render(m):
        name = m.group(2)
        if name not in RENDERERS:
            raise SystemExit(f"{where}: unknown results region {name!r}; known: {sorted(RENDERERS)}")
        return m.group(1) + RENDERERS[name]().rstrip("\n") + "\n" + m.group(4)

    return REGION.sub(render, text)


def stale_regions(path: Path) -> list[str]:
    text = path.read_text()
    return [
        m.group(2)
        for m, r in zip(REGION.finditer(text), REGION.finditer(render_text(text, str(path))))
        if m.group(3) != r.group(3)
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.render_docs", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a region differs from its JSON")
    args = p.parse_args(argv)
    stale = {}
    for doc in (ROOT / d for d in DOCS):
        if not doc.is_file():
            continue
        if args.check:
            stale[doc.relative_to(ROOT)] = stale_regions(doc)
        else:
            doc.write_text(render_text(doc.read_text(), str(doc)))
    stale = {str(k): v for k, v in stale.items() if v}
    if stale:
        print(f"stale results regions (run `python -m bench.render_docs`): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
