"""Benchmarks. `make bench` (= `python -m bench.run_all`) runs every script here, then renders the docs' numbers.

Convention for a bench script `bench/<name>.py`: a `main(argv) -> int` whose defaults are sized for a 2-core CPU,
runnable as `python -m bench.<name>`, that calls `write_result(name, ...)` once. `bench/results/<name>.json` then
holds the machine, versions, config, per-repeat timings and a one-line summary; `headline` lists the ratios people
compare, each `{"metric": str, "value": float, "target": str, "met": bool | None}`.

What every script shares lives here: timing (`seconds_per_call`, `interleaved`, `latency_ms`), result writing
(`write_result`, `machine_info`) and plots (`figure`).
"""

import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import time
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


def sync(device: str) -> None:
    """Wait for the GPU's queued work, so that a timer stopped now counts it."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def seconds_per_call(fn, calls: int = 1, device: str = "cpu") -> float:
    """Seconds per call over `calls` back-to-back calls of `fn`, GPU work included."""
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def interleaved(variants: dict, repeats: int, device: str = "cpu", desc: str | None = None) -> dict[str, list[float]]:
    """Seconds of one call of each variant per repeat, after one warm-up call each. The order rotates every repeat,
    so a load that drifts on a shared machine falls on every variant alike; compare them per repeat (paired)."""
    from tqdm import tqdm

    names = list(variants)
    for name in names:
        variants[name]()
    times = {name: [] for name in names}
    for repeat in tqdm(range(repeats), desc=desc, unit="repeat", leave=False, disable=desc is None):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name].append(seconds_per_call(variants[name], 1, device))
    return times


def latency_ms(latencies) -> dict:
    """p50 and p99 of request latencies (seconds), in milliseconds."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * p99}


@contextlib.contextmanager
def figure(path, nrows: int = 1, ncols: int = 1, dpi: int = 120, **subplots):
    """(figure, axes) of a headless matplotlib figure, laid out, saved to `path` (PNG) and closed on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
