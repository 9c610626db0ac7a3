"""Does relabelling pay? Held-out accuracy of on-policy vs relabelled RL at equal wall time (issue 15, point 2).

The issue-15 setting (bench/relabel_common.py): SmolLM2-135M-Instruct, formality + format (list) objectives,
natural-sentence directives after the question, the oracle as reward, one single-objective request per training
prompt. Every run starts from the same policy; each mode trains with its own step count so that all runs cost the
same wall time: on-policy gets `--steps`, a relabelled run `--steps / ratio`, with `ratio` the measured cost of a
relabelled step (bench/results/bench_relabel.json, one run on this machine, or `--ratio`). Evaluation: the held-out
prompts x the 4 single-objective requests, greedy; accuracy = share of answers at the requested level; conditional
gap = P(level 1 | asked 1) - P(level 1 | asked 0), per objective, averaged. 95 % intervals: bootstrap over prompts
(seeds pooled). Not a `make bench` script (no `main`): it trains several policies.

    python -m bench.relabel_heldout --seeds 1 2 --modes none levels --steps 8
    python -m bench.relabel_heldout --plot bench/results/relabel_heldout*.json
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import RESULTS_DIR, machine_info
from bench.relabel_common import REQUESTS, SPEC, judge, messages, oracle_reward, rows
from moslim_plugin.demo.evaluate import builtin_prompts
from moslim_plugin.demo.local_rl import generate, load_policy, parse_rl_args, train_policy
from moslim_plugin.demo.real_models import smollm2_path

# With two binary objectives and one-objective requests, `levels` has exactly 1 copy and `all` at most 3.
MODES = {
    "none": [], "levels": ["--moslim.relabel", "levels"],
    "all2": ["--moslim.relabel", "all", "--moslim.relabel_copies", "2"],
    "all3": ["--moslim.relabel", "all", "--moslim.relabel_copies", "3"],
}  # fmt: skip
# bench_relabel measures 1, 2 and 4 copies; 3 copies is charged as 2 (the lower cost: more steps for relabelling).
COST_KEY = {"levels": "1", "all2": "2", "all3": "2"}


def evaluate(model, tokenizer, prompts, tokens) -> list[dict]:
    pairs = [(p, rq) for p in prompts for rq in REQUESTS]
    _, _, texts = generate(model, tokenizer, [messages(p, rq) for p, rq in pairs], tokens, temperature=0,
                           batch_size=48, desc="evaluate")  # fmt: skip
    return [{"prompt": p, "request": rq, "achieved": judge(t), "text": t} for (p, rq), t in zip(pairs, texts)]


def scores(samples: list[dict]) -> dict:
    hit = sum(all(s["achieved"][n] == lv for n, lv in s["request"].items()) for s in samples) / len(samples)
    gaps = []
    for name in SPEC.names:
        asked = {lv: [s["achieved"][name] for s in samples if s["request"].get(name) == lv] for lv in (0, 1)}
        gaps.append(sum(asked[1]) / len(asked[1]) - sum(asked[0]) / len(asked[0]))
    return {"accuracy": hit, "gap": sum(gaps) / len(gaps)}


def bootstrap(samples: list[dict], n=2000, seed=0) -> dict:
    """Point values and 95 % intervals, resampling prompts (all requests and seeds of a prompt stay together)."""
    by_prompt = {}
    for s in samples:
        by_prompt.setdefault(s["prompt"], []).append(s)
    prompts, rng = list(by_prompt), random.Random(seed)
    draws = [scores([s for p in rng.choices(prompts, k=len(prompts)) for s in by_prompt[p]]) for _ in range(n)]
    out = {}
    for key, value in scores(samples).items():
        ordered = sorted(d[key] for d in draws)
        out[key] = {"value": value, "ci95": [ordered[int(0.025 * n)], ordered[int(0.975 * n) - 1]]}
    return out


def plot(paths, out) -> None:
    """Held-out accuracy and conditional gap with 95 % intervals, per run, from one or more result files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_ = []
    for path in paths:
        report = json.loads(Path(path).read_text())
        rows_.append(("base", report["base"]))
        rows_ += [(name, run) for name, run in report["runs"].items() if not name.endswith("pooled")]
    rows_ = list(dict((name, run) for name, run in rows_).items())
    print("| run | steps | held-out accuracy [95 % CI] | conditional gap [95 % CI] | train s |")
    print("| --- | --- | --- | --- | --- |")
    for name, run in rows_:
        acc, gap = run["accuracy"], run["gap"]
        print(
            f"| {name} | {run.get('steps', 0)} | {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] | "
            f"{gap['value']:.3f} [{gap['ci95'][0]:.3f}, {gap['ci95'][1]:.3f}] | {run.get('train_seconds', 0):.0f} |"
        )
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key in zip(axes, ("accuracy", "gap")):
        for i, (_, run) in enumerate(rows_):
            low, high = run[key]["ci95"]
            value = run[key]["value"]
            ax.errorbar([i], [value], yerr=[[value - low], [high - value]], fmt="o", capsize=3)
        ax.set_xticks(range(len(rows_)), [name for name, _ in rows_], rotation=30, ha="right")
        ax.set_title(f"held-out {key} (95 % CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main_run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="relabel_heldout", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["none", "levels"], choices=list(MODES))
    p.add_argument("--steps", type=int, default=8, help="on-policy steps; relabelled runs get steps / cost ratio")
    p.add_argument("--ratio", type=float, default=None, help="cost of a relabelled step (default: bench result)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--eval-prompts", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS_DIR / "relabel_heldout.json"))
    p.add_argument(
        "--plot", nargs="+", default=None, help="only tabulate these result files and draw relabel_heldout.png"
    )
    a = p.parse_args(argv)
    if a.plot:
        plot(a.plot, RESULTS_DIR / "relabel_heldout.png")
        return 0
    torch.set_num_threads(a.threads)
    bench = RESULTS_DIR / "bench_relabel.json"
    cost = json.loads(bench.read_text())["results"] if bench.is_file() else {}
    heldout, train = builtin_prompts("heldout")[: a.eval_prompts], builtin_prompts("train")
    model, tokenizer = load_policy(smollm2_path(), 4)
    t0 = time.time()
    base = evaluate(model, tokenizer, heldout, a.tokens)
    report = {"config": vars(a), "machine": machine_info(), "base": bootstrap(base), "runs": {}, "seconds": {}}
    report["seconds"]["evaluate"] = time.time() - t0
    print("base", json.dumps(report["base"]), flush=True)
    for mode in a.modes:
        ratio = 1.0 if mode == "none" else (a.ratio or cost[COST_KEY[mode]]["ratio_to_none"])
        steps = max(1, round(a.steps / ratio))
        pooled = []
        for seed in a.seeds:
            model, tokenizer = load_policy(smollm2_path(), 4)
            order = random.Random(seed).sample(train, len(train))
            with tempfile.TemporaryDirectory() as tmp:
                args = parse_rl_args([
                    "--rollout.batch_size", str(a.prompts), "--rollout.n_samples_per_prompt", str(a.samples),
                    "--rollout.max_new_tokens", str(a.tokens), "--rollout.temperature", "0.7",
                    "--rollout.micro_batch_size", "32", "--algo.kl.init_coef", "0", "--actor.adam.lr", "2e-4",
                    "--train.seed", str(seed), "--ckpt.output_dir", tmp, *MODES[mode],
                ])  # fmt: skip
                args.data.max_samples = steps * a.prompts
                t0 = time.time()
                result = train_policy(args, rows(order, seed), oracle_reward, model=model, tokenizer=tokenizer,
                                      spec=SPEC, prompt_fn=messages)  # fmt: skip
                train_s = time.time() - t0
            samples = evaluate(model, tokenizer, heldout, a.tokens)
            pooled += samples
            run = {"steps": steps, "ratio": ratio, "train_seconds": train_s, **bootstrap(samples)}
            run["train_reward"] = [h["reward"] for h in result["history"]]
            report["runs"][f"{mode}/seed{seed}"] = run
            print(
                mode, seed, json.dumps({k: run[k] for k in ("steps", "accuracy", "gap", "train_seconds")}), flush=True
            )
            Path(a.out).write_text(json.dumps(report, indent=1) + "\n")  # partial results survive an interruption
        report["runs"][f"{mode}/pooled"] = {"steps": steps, **bootstrap(pooled)}
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report["runs"].items() if k.endswith("pooled")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main_run())
