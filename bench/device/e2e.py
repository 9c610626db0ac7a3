"""OpenRLHF's own training loop with the MOSLIM reward on one GPU with real vLLM: the `e2e` step of run.sh.

The run tests/test_e2e.py makes on CPU (`bash launch/grpo.sh inprocess` through `ray job submit` to a one-node Ray
cluster), here with every GPU piece real: vLLM, the scripts' NCCL / CUDA IPC weight sync, flash-attn when installed
(else sdpa), DeepSpeed's CUDA kernels, the MOSLIM reward model on the GPU, and the whole SmolLM2-135M-Instruct as the
policy (staged like the demo's, see README.md). Only sizes are overridden (GPU_OVERLAY). The MOSLIM RM is trained by
`train-rm` on MiniLM for a few steps first.

Writes <out>/e2e_gpu.json: per-step metrics as OpenRLHF logged them (TensorBoard), the job's wall time, and the
checks that need no engine instrumentation: `moslim/*` at every step, the trainer's rewards against the Scorer's on
the same samples (bf16 on both sides: the largest difference is reported), the actor's weights changed, the final
save loads with transformers. <out>/e2e_job.log holds the end of the job's output.

`--dry_run` runs all of it here on CPU, with tests/cpu_support's stand-ins and the CPU overlay instead
(<out>/e2e_dry.json): everything but the GPU pieces is checked before a device call is spent.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import helpers_e2e as e2e  # noqa: E402  (the e2e harness lives with the tests)

GPU_SAMPLES_PER_STEP = 64
GPU_OVERLAY = [
    "--rollout.max_new_tokens", "128", "--data.max_len", "1024",
    "--train.micro_batch_size", "8", "--rollout.micro_batch_size", "16",
    "--train.batch_size", str(GPU_SAMPLES_PER_STEP), "--ckpt.save_steps", "1",
    "--vllm.enforce_eager",  # CUDA-graph capture would take a good part of the call's budget
]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=420, help="seconds for the training job")
    parser.add_argument("--dry_run", action="store_true", help="CPU, with tests/cpu_support's stand-ins")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "script": "launch/grpo.sh inprocess", "steps": args.steps}
    result_file = out / ("e2e_dry.json" if args.dry_run else "e2e_gpu.json")

    def finish(status: str, **fields) -> int:
        report.update(status=status, **fields)
        result_file.write_text(json.dumps(report, indent=2) + "\n")
        print(f"[e2e] {status}: {result_file}")
        return 0 if status == "ok" else 1

    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            return finish("skipped", reason="no CUDA device")
        if importlib.util.find_spec("vllm") is None:
            return finish("skipped", reason="vLLM is not installed in this image: the e2e needs the real engine")
        report["gpu"] = torch.cuda.get_device_name(0)

    from moslim_plugin.demo.real_models import smollm2_path

    work = Path(tempfile.mkdtemp(prefix="moslim-e2e-"))
    env = e2e.base_env(work, cpu=args.dry_run)
    build_env = {k: v for k, v in env.items() if k != "MOSLIM_CPU_E2E"}
    t0 = time.time()
    policy = e2e.cut_policy(smollm2_path(), work / "policy") if args.dry_run else smollm2_path()
    shared = REPO.parent / "shared" / "data"
    rm = e2e.train_rm(work / "rm", shared, work, build_env, device="cpu" if args.dry_run else "cuda")
    assets = {"policy": Path(policy), "rm": rm, "prompts": e2e.write_prompts(work / "prompts.jsonl", 166)}
    report["assets_seconds"] = round(time.time() - t0, 1)

    overlay, samples = (e2e.CPU_OVERLAY, e2e.SAMPLES_PER_STEP) if args.dry_run else (GPU_OVERLAY, GPU_SAMPLES_PER_STEP)
    if not args.dry_run and importlib.util.find_spec("flash_attn") is None:
        overlay = [*overlay, "--ds.attn_implementation", "sdpa"]  # the scripts' flash_attention_2 is not installed
    # No dashboard (its Python dependencies are not in the bundle): the driver is the command after `ray job submit
    # ... --`, started here, and the record folder reaches the job's processes through the cluster's env.
    run = e2e.Run(work / "runs", "grpo")
    cluster = e2e.RayCluster(work, {**env, e2e.RECORD_ENV: str(run.records)}, gpus=1, cpus=8 if args.dry_run else 16,
                             dashboard=False)  # fmt: skip
    try:
        script_env = run.script_env(assets, cluster)
        command = run.command("grpo", "inprocess", script_env, steps=args.steps, overlay=overlay, samples=samples,
                              submit=False)  # fmt: skip
        report["command"] = command
        t0 = time.time()
        run.start(command, script_env)
        try:
            run.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:  # the budget ran out: stop the job, report what was logged
            run.stop_job(script_env)
            run.wait(timeout=120)
        report["job_seconds"] = round(time.time() - t0, 1)
    finally:
        cluster.stop()
    (out / "e2e_job.log").write_text(run.output()[-200_000:])
    status, fields = check(run, assets, args)
    return finish(status, **fields)


def check(run, assets, args):
    scalars = run.scalars()
    steps = {step: {key.removeprefix("train/"): values[step] for key, values in scalars.items() if step in values}
             for step in range(1, args.steps + 1)}  # fmt: skip
    checks = {"returncode": run.returncode}
    keys = [f"moslim/{o}/{k}" for o in ("helpful", "harmless") for k in ("p_target", "hit", "term", "requested")]
    checks["moslim_metrics_every_step"] = all(all(k in steps[s] for k in keys) for s in steps)
    records = run.trainer_records()
    if records:
        import torch

        kwargs = {} if args.dry_run else {"device": "cuda", "dtype": torch.bfloat16}  # the GPU actor's bf16
        expected = e2e.scorer_rewards(assets, records, **kwargs)
        checks["reward_vs_scorer_max_abs_diff"] = max(abs(r["reward"] - x) for r, x in zip(records, expected))
        checks["samples"] = len(records)
    final = run.save / "model.safetensors"
    if final.is_file():
        initial = e2e.tensor_digest(assets["policy"])
        checks["actor_tensors_changed"] = sum(initial[k] != v for k, v in e2e.tensor_digest(run.save).items())
        from transformers import AutoModelForCausalLM

        checks["final_save_loads"] = AutoModelForCausalLM.from_pretrained(run.save) is not None
    ok = (
        run.returncode == 0
        and checks["moslim_metrics_every_step"]
        and checks.get("reward_vs_scorer_max_abs_diff", 1) < (1e-5 if args.dry_run else 5e-2)
        and checks.get("actor_tensors_changed", 0) > 0
    )
    return ("ok" if ok else "failed"), {"checks": checks, "metrics": steps}


if __name__ == "__main__":
    raise SystemExit(main())
