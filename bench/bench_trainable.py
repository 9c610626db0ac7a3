"""All layers vs top-4 layers vs LoRA at equal wall time: how far an unconditional oracle reward rises.

Reward: 1 if the answer uses a contraction (`moslim_plugin.demo.oracle.formality_level`), else 0; about half of
SmolLM2-135M-Instruct's sampled answers do, so every rollout has signal. The demo's RL settings (lr 2e-4, no KL,
REINFORCE baseline, T=0.7) on its training prompts without directives, `train_policy` as it is, each run stopped
after --budget_s seconds of wall time (model loading excluded). The reward of rollout k measures the policy after
k-1 updates. Configurations run in a rotated order per seed; the machine's cores are shared, so a run's step count
depends on the load during it: read the curves with that in mind.

    python -m bench.bench_trainable [--budget_s 240] [--seeds 1 2] [--threads 1]
"""

import argparse
import time
from pathlib import Path

import torch

from bench import RESULTS_DIR, figure, write_result

PROMPTS = Path(__file__).resolve().parent.parent / "moslim_plugin" / "demo" / "prompts" / "prompts_train.txt"
CONFIGS = {
    "all_layers": ["--moslim.trainable_layers", "-1"],
    "top4": ["--moslim.trainable_layers", "4"],
    "lora_r16_all": ["--moslim.trainable_layers", "-1", "--actor.lora.rank", "16", "--actor.lora.alpha", "32"],
}


class OutOfTime(Exception):
    pass


def run(config: str, seed: int, budget_s: float, out_dir: Path, rows) -> dict:
    from moslim_plugin.demo.local_rl import parse_rl_args, train_policy
    from moslim_plugin.demo.oracle import formality_level
    from moslim_plugin.demo.policy import load_policy
    from moslim_plugin.demo.real_models import smollm2_path

    args = parse_rl_args([
        *CONFIGS[config], "--actor.adam.lr", "2e-4", "--algo.kl.init_coef", "0", "--rollout.temperature", "0.7",
        "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "32",
        "--rollout.micro_batch_size", "16", "--train.num_episodes", "50", "--train.seed", str(seed),
        "--ckpt.output_dir", str(out_dir),
    ])  # fmt: skip
    model, tok = load_policy(smollm2_path(), args.moslim.trainable_layers, lora=args.ds.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    curve, start = [], time.time()

    def reward(questions, responses, requests):
        rewards = torch.tensor([float(formality_level(r)) for r in responses])
        curve.append({"seconds": time.time() - start, "reward": float(rewards.mean())})
        if curve[-1]["seconds"] > budget_s:
            raise OutOfTime
        return rewards, {}

    try:
        train_policy(args, rows, reward, model=model, tokenizer=tok, progress=False)
    except OutOfTime:
        pass
    return {"config": config, "seed": seed, "trainable_params": trainable, "curve": curve}


def plot(runs: list, path: Path) -> None:
    with figure(path, figsize=(7, 4)) as (fig, ax):
        for r in runs:
            color = f"C{list(CONFIGS).index(r['config'])}"
            xs, ys = [p["seconds"] for p in r["curve"]], [p["reward"] for p in r["curve"]]
            ax.plot(xs, ys, "o-", color=color, ms=3, label=f"{r['config']} (seed {r['seed']})", alpha=0.8)
        ax.set_xlabel("wall seconds (shared 2-core CPU)")
        ax.set_ylabel("rollout reward (share with a contraction)")
        ax.set_title("All layers vs top-4 vs LoRA at equal wall time")
        ax.legend(fontsize=7)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_trainable", description=__doc__.split("\n")[0])
    parser.add_argument("--budget_s", type=float, default=240)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out_dir", type=str, default="/tmp/bench_trainable")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    questions = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    rows = [{"question": q, "request": {}, "messages": [{"role": "user", "content": q}]} for q in questions]

    runs, names = [], list(CONFIGS)
    for k, seed in enumerate(args.seeds):
        for config in names[k % len(names) :] + names[: k % len(names)]:  # rotated order per seed
            runs.append(run(config, seed, args.budget_s, Path(args.out_dir, f"{config}-{seed}"), rows))
            print(config, seed, [round(p["reward"], 2) for p in runs[-1]["curve"]], flush=True)
    plot(runs, RESULTS_DIR / "bench_trainable.png")
    headline, summary = [], []
    for config in names:
        mine = [r for r in runs if r["config"] == config]
        # Rise: mean reward of the last two rollouts minus the first (the untrained policy), averaged over seeds.
        rise = sum(sum(p["reward"] for p in r["curve"][-2:]) / len(r["curve"][-2:]) - r["curve"][0]["reward"]
                   for r in mine) / len(mine)  # fmt: skip
        steps = sum(len(r["curve"]) for r in mine) / len(mine)
        headline.append({"metric": f"{config} reward rise in {args.budget_s:.0f} s", "value": round(rise, 3),
                         "target": "compare", "met": None})  # fmt: skip
        summary.append(f"{config}: rise {rise:+.3f} over {steps:.1f} rollouts")
    write_result("bench_trainable", vars(args), {"runs": runs}, "; ".join(summary), headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
