"""Benchmarks. `make bench` (= `python -m bench.run_all`) runs every script here, then renders the docs' numbers.

Convention for a bench script `bench/<name>.py`: a `main(argv) -> int` whose defaults are sized for a 2-core CPU,
runnable as `python -m bench.<name>`, that calls `write_result(name, ...)` once. `bench/results/<name>.json` then
holds the machine, versions, config, per-repeat timings and a one-line summary; `headline` lists the ratios people
compare, each `{"metric": str, "value": float, "target": str, "met": bool | None}`.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def machine_info() -> dict:
    import torch

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        # A CPU timing means little without the load it ran under (other jobs on a shared machine).
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        # The CPU model name is what makes CPU timings comparable across machines.
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    for package in ("torch", "transformers", "openrlhf", "deepspeed"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        info["git_commit"] = None
    return info


def write_result(name: str, config: dict, results: dict, summary: str, headline: list, path=None) -> Path:
    """Write bench/results/<name>.json (or `path`) and print the one-line summary."""
    for item in headline:
        missing = {"metric", "value", "target", "met"} - set(item)
        if missing:
            raise ValueError(f"headline entry {item!r} of {name} lacks {sorted(missing)}")
    path = Path(path) if path else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "machine": machine_info(), "config": config, "results": results}
    payload.update(summary=summary, headline=headline)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"[{name}] {summary}")
    return path
