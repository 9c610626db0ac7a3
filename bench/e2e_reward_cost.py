"""What the MOSLIM reward costs inside OpenRLHF's real training loop.

The same run of launch/grpo.sh (OpenRLHF's train_ppo_ray through `ray job submit`, on CPU with the stand-ins and
overlay of tests/helpers_e2e.py) three ways, the reward model being the only difference:
- `stock`: OpenRLHF's own scalar reward model (its RewardModelActor and `get_llm_for_sequence_regression`): the
  policy's backbone (SmolLM2-135M-Instruct cut to 2 layers) with a `score` head, reading the policy's token ids, in
  the training dtype (bf16);
- `moslim`: a MOSLIM reward model on the same backbone, trained by `train-rm` for a few steps, in-process (it
  decodes the policy's tokens, splits prompt and response, re-tokenises), at its CPU default dtype (fp32);
- `moslim_bf16`: the same with `--moslim.dtype bf16`, the stock model's dtype.
Every run reads the same prompts, conditioned offline by `prepare-prompts` (no --moslim.sampling), so the
generations and the optimiser work are the same size. Step time is OpenRLHF's own `timing/step_total`; the reward's
time is the wall time of the reward group's forward in the step (the trainer-side observer of tests/cpu_support);
the first step of every run (warm-up) is left out. Configurations alternate within each repeat.

Run it on an otherwise idle machine: `.venv/bin/python -m bench.e2e_reward_cost` (about 16 min on 2 cores).
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench import write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import helpers_e2e as e2e  # noqa: E402  (the e2e harness lives with the tests)

MOSLIM_FLAGS = ("--moslim.spec", "--moslim.sampling", "--moslim.seed", "--moslim.mapping", "--moslim.mapping_kwargs")
CONFIGS = {
    "stock": dict(rm="stock", drop_with_value=MOSLIM_FLAGS, extra=()),
    "moslim": dict(rm="moslim", drop_with_value=("--moslim.sampling",), extra=()),
    "moslim_bf16": dict(rm="moslim", drop_with_value=("--moslim.sampling",), extra=("--moslim.dtype", "bf16")),
}


def stock_reward_model(backbone: Path, target: Path) -> Path:
    """OpenRLHF's scalar reward-model format on `backbone`: the backbone's weights plus a `score` head (random: the
    bench times it, nothing reads its values)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, dtype=torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(target)
    return target


def per_step(run, steps) -> list[dict]:
    """Per step after the first: OpenRLHF's phase timings and the reward group's time."""
    scalars = run.scalars()
    reward = [r["reward_seconds"] for r in run.trainer_records("timing")]
    if run.returncode or len(reward) != steps:
        raise RuntimeError(f"{run.dir.name} failed or incomplete:\n{run.output()[-4000:]}")
    out = []
    for step in range(2, steps + 1):
        row = {key.split("/", 2)[-1]: scalars[key][step] for key in scalars if key.startswith("train/timing/")}
        row["reward"] = reward[step - 1]
        out.append(row)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="moslim-e2e-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    from moslim_plugin.demo.real_models import smollm2_path

    env = e2e.base_env(work)
    env.pop("MOSLIM_CPU_E2E")
    policy = e2e.cut_policy(smollm2_path(), work / "policy")
    rms = {
        "stock": stock_reward_model(policy, work / "stock-rm"),
        "moslim": e2e.train_rm(work / "moslim-rm", REPO.parent / "shared" / "data", work, env, backbone=policy),
    }
    prompts = e2e.prepare_prompts(e2e.write_prompts(work / "prompts.jsonl", 64), work / "prepared.jsonl", env)

    cluster = e2e.RayCluster(work, e2e.base_env(work))
    runs = {name: [] for name in CONFIGS}
    try:
        for repeat in range(args.repeats):
            for name, config in CONFIGS.items():
                run = e2e.Run(work / "runs", f"{name}-{repeat}")
                assets = {"policy": policy, "rm": rms[config["rm"]], "prompts": prompts}
                script_env = run.script_env(assets, cluster)
                command = run.command("grpo", "inprocess", script_env, config["extra"],
                                      drop_with_value=config["drop_with_value"], steps=args.steps)  # fmt: skip
                print(f"[e2e_reward_cost] {name} repeat {repeat + 1}/{args.repeats}", flush=True)
                runs[name] += per_step(run.start(command, script_env).wait(), args.steps)
    finally:
        cluster.stop()

    def median(name, key):
        return statistics.median(row[key] for row in runs[name])

    results = {
        name: {
            "steps": rows,
            "median_step_seconds": median(name, "step_total"),
            "median_reward_seconds": median(name, "reward"),
            "median_reward_share": statistics.median(row["reward"] / row["step_total"] for row in rows),
        }
        for name, rows in runs.items()
    }
    ratio = {name: results[name]["median_step_seconds"] / results["stock"]["median_step_seconds"] for name in runs}
    headline = [
        {"metric": "step time moslim (fp32, CPU default) / stock RM", "value": round(ratio["moslim"], 3),
         "target": "<= 1.05", "met": ratio["moslim"] <= 1.05},
        {"metric": "step time moslim bf16 / stock RM", "value": round(ratio["moslim_bf16"], 3), "target": "<= 1.05",
         "met": ratio["moslim_bf16"] <= 1.05},
    ] + [
        {"metric": f"share of the step in the reward: {name}", "value": round(results[name]["median_reward_share"], 4),
         "target": "reported", "met": None}
        for name in runs
    ]  # fmt: skip
    summary = (
        f"median step {results['stock']['median_step_seconds']:.2f} s stock, "
        f"{results['moslim']['median_step_seconds']:.2f} s moslim ({ratio['moslim']:.3f}x), "
        f"{results['moslim_bf16']['median_step_seconds']:.2f} s moslim bf16 ({ratio['moslim_bf16']:.3f}x); reward "
        + ", ".join(f"{name} {results[name]['median_reward_seconds']:.3f} s" for name in runs)
    )
    config = {"script": "launch/grpo.sh inprocess + tests/helpers_e2e.CPU_OVERLAY", "steps": args.steps,
              "timed_steps": args.steps - 1, "repeats": args.repeats, "samples_per_step": e2e.SAMPLES_PER_STEP,
              "policy_and_rm_backbone": f"SmolLM2-135M-Instruct, first {e2e.POLICY_LAYERS} layers",
              "configs": CONFIGS}  # fmt: skip
    write_result("e2e_reward_cost", config, results, summary, headline)
    print(json.dumps(ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
