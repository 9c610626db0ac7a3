"""`make bench`: run every bench script in bench/ with its CPU-sized defaults, then render the docs' numbers.

A bench script is any module `bench/<name>.py` with a `main(argv)` function (see bench/__init__.py for what it
writes). Each runs in its own subprocess, one after another (they time things: never two at once), so a crash or a
hang in one is recorded and the others still run. Any failure is printed, recorded in bench/results/run_all.json
(the rendered table marks it) and makes the exit status non-zero. The docs are then rendered from the results files
by bench/render_docs.py.
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

from bench import RESULTS_DIR, machine_info, render_docs

BENCH_DIR = Path(__file__).parent


def discover() -> list[str]:
    """Module names in bench/ that define a top-level `main` (read without importing: imports are heavy)."""
    names = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.stem.startswith("_") or path.stem in ("run_all", "render_docs"):
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


def record_runs(runs: list[dict], machine: dict) -> None:
    """bench/results/run_all.json: this run's failures (with their output's tail), for the rendered table."""
    record = {"date_utc": machine["date_utc"], "machine": machine, "runs": runs}
    (RESULTS_DIR / "run_all.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these scripts (module names)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script before it counts as failed")
    parser.add_argument("--doc_only", action="store_true", help="only render the docs from bench/results/*.json")
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
    if runs:
        record_runs(runs, machine_info())
    render_docs.main([])
    failed = [run["name"] for run in runs if run["error"]]
    print(f"[run_all] rendered the docs; {len(runs) - len(failed)} ok, {len(failed)} failed {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
