"""The GPU bundle's run script (bench/device/run.sh) in its CPU dry run: the demo step runs the gpu preset's code path
at tiny sizes and its report comes back in $OUT, as it would from a device call."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.slow
def test_bundle_dry_run_runs_the_demo_gpu_preset_on_cpu_and_returns_its_report(tmp_path, tiny_policy):
    out = tmp_path / "out"
    env = {
        **os.environ, "MOSLIM_GPU_DRY_RUN": "1", "MOSLIM_GPU_STEPS": "demo", "OUT": str(out), "PY": sys.executable,
        "MOSLIM_GPU_DEMO_DIR": str(tmp_path / "demo"), "PYTHONPATH": str(REPO),
        # A random 3-layer policy instead of SmolLM2: the script's wiring is tested, not the model.
        "MOSLIM_GPU_DEMO_ARGS": f"--actor.model_name_or_path {tiny_policy} --moslim.trainable_layers 1",
    }  # fmt: skip
    proc = subprocess.run(["bash", "bench/device/run.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    log = (out / "gpu_log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "DRY RUN" in log and "demo: rc=0" in log
    report = json.loads((out / "demo_report.json").read_text())
    assert report["settings"]["preset"] == "gpu" and report["settings"]["device"] == "cpu"
    assert set(report["policies"]) == {"base", "RiC SFT", "MOSLIM seed 1"}
    assert "size preset `gpu` on `cpu`" in (out / "demo_report.md").read_text()
    with tarfile.open(out / "demo_results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"report.md", "report.json", "./requested_vs_achieved.png", "policy_seed1/rl_history.json"} <= names
    # Only small files come back (the device tool returns at most 8, 16 MiB each): no checkpoints.
    assert len(list(out.iterdir())) <= 8 and all(f.stat().st_size < 16 * 2**20 for f in out.iterdir())
