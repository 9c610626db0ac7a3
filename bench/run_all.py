"""`make bench`: run every bench script in bench/ with its CPU-sized defaults and write docs/benchmarks.md.

A bench script is any module `bench/<name>.py` with a `main(argv)` function (see bench/__init__.py for what it
writes). Each runs in its own subprocess, one after another (they time things: never two at once), so a crash or a
hang in one is recorded and the others still run. Any failure is printed, written into the table, and makes the
exit status non-zero.
"""

import argparse
import ast
import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from bench import RESULTS_DIR, machine_info

BENCH_DIR = Path(__file__).parent
DOC = BENCH_DIR.parent / "docs" / "benchmarks.md"


def discover() -> list[str]:
    """Module names in bench/ that define a top-level `main` (read without importing: imports are heavy)."""
    names = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.stem.startswith("_") or path.stem == "run_all":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            names.append(path.stem)
    return names


def run_one(name: str, timeout: float, extra_args: list[str]) -> dict:
    start = time.time()
    cmd = [sys.executable, "-m", f"bench.{name}", *extra_args]
    # The script's output (its tqdm bars included) goes through to the terminal as it comes; its tail is kept for the
    # failure report. A timer kills a script that runs past the timeout.
    proc = subprocess.Popen(cmd, cwd=BENCH_DIR.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    tail = collections.deque(maxlen=64)
    while chunk := proc.stdout.read1(4096):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail.append(chunk)
    returncode, timed_out = proc.wait(), not timer.is_alive()
    timer.cancel()
    output = b"".join(tail).decode(errors="replace")
    seconds = time.time() - start
    result_file = RESULTS_DIR / f"{name}.json"
    result = None
    if result_file.is_file() and result_file.stat().st_mtime >= start:
        result = json.loads(result_file.read_text())
    error = None
    if timed_out:
        error = f"killed after the {timeout:.0f} s timeout"
    elif returncode != 0:
        error = f"exit status {returncode}"
    elif result is None:
        error = f"finished but did not write {result_file.relative_to(BENCH_DIR.parent)}"
    return {"name": name, "seconds": seconds, "error": error, "result": result, "output_tail": output[-3000:]}


def fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_doc(runs: list[dict], machine: dict) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`python -m bench.run_all`) on {machine['date_utc']}; each script's own run date is "
        f"in its summary line. Machine: {machine['cpu']}, "
        f"{machine['cpu_count']} CPUs, GPU: {machine['gpu'] or 'none'}; torch {machine['torch']}, transformers "
        f"{machine['transformers']}, OpenRLHF {machine['openrlhf']}; commit {machine['git_commit']}.",
        "",
        "Ratios are the headline: absolute times depend on the machine and, on shared CPUs, on its load. Every "
        "number comes from `bench/results/<script>.json` (config, per-repeat timings, machine).",
        "",
        "| script | metric | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        if run["error"]:
            lines.append(f"| {run['name']} | **FAILED: {run['error']}** | | | |")
            continue
        for item in run["result"]["headline"] or [{"metric": "(no headline)", "value": "", "target": "", "met": ""}]:
            met = {True: "yes", False: "**NO**", None: "n/a"}.get(item["met"], item["met"])
            lines.append(f"| {run['name']} | {item['metric']} | {fmt(item['value'])} | {item['target']} | {met} |")
    lines += ["", "## Summaries", ""]
    for run in runs:
        summary = run["result"]["summary"] if run["result"] else f"FAILED ({run['error']})"
        when = f"{run['seconds']:.0f} s" if run["seconds"] is not None else "earlier run"
        if run["result"]:
            when += f", {run['result']['machine']['date_utc']}"
        lines.append(f"- `{run['name']}` ({when}): {summary}")
        for png in sorted(RESULTS_DIR.glob(f"{run['name']}*.png")):
            lines.append(f"  ![{png.stem}](../bench/results/{png.name})")
    failed = [run for run in runs if run["error"]]
    if failed:
        lines += ["", "## Failures", ""]
        for run in failed:
            lines += [f"### {run['name']}: {run['error']}", "", "```", run["output_tail"].strip(), "```", ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these scripts (module names)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script before it counts as failed")
    parser.add_argument("--doc_only", action="store_true", help="only rewrite the table from bench/results/*.json")
    args, extra = parser.parse_known_args(argv)
    names = [] if args.doc_only else discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown bench scripts {unknown}; found {names}")
        names = [n for n in names if n in args.only]
    runs = []
    for name in tqdm(names, desc="bench", unit="script"):
        run = run_one(name, args.timeout, extra)
        status = "ok" if run["error"] is None else f"FAILED ({run['error']})"
        tqdm.write(f"[run_all] {name}: {status} in {run['seconds']:.0f} s")
        runs.append(run)
    # Scripts left out by --only keep their last results in the table, marked as earlier runs.
    earlier = [
        {"name": n, "seconds": None, "error": None, "result": json.loads((RESULTS_DIR / f"{n}.json").read_text())}
        for n in discover()
        if n not in names and (RESULTS_DIR / f"{n}.json").is_file()
    ]
    write_doc(runs + earlier, machine_info())
    failed = [run["name"] for run in runs if run["error"]]
    print(f"[run_all] wrote {DOC}; {len(runs) - len(failed)} ok, {len(failed)} failed{': ' if failed else ''}"
          + ", ".join(failed))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
