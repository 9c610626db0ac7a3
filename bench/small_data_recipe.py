"""The README's "small data on a CPU" recipe, run as written on real rated rows and timed: what the README reports.

The rows: the first `--pairs` pairs of each HH-RLHF test split in ../shared/data, through `prepare-ratings
--moslim.format hh_rlhf` (chosen = level 1, rejected = level 0 of the file's objective, the other head masked):
`--pairs 125` gives 500 rated rows, two responses per question. The recipe: the commands of the fenced block after
the README's `<!-- recipe: small-data -->` marker, run by bash in a work folder holding those rows as the file the
recipe names, one after another, each timed. bench/results/small_data_recipe.json keeps the commands exactly as run
(tests/test_docs_numbers.py fails when the README's recipe no longer matches them), their seconds, train-rm's
held-out metrics against the baselines and evaluate-rm's report; the README's numbers are rendered from it.

    flock /work/cpu.lock .venv/bin/python -m bench.small_data_recipe
"""

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import RESULTS_DIR, write_result

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- recipe: small-data -->"


def recipe_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The commands of the fenced block after the marker, a continued line (trailing backslash) joined into one."""
    text = readme.read_text(encoding="utf-8")
    if MARKER not in text:
        raise SystemExit(f"{readme}: no {MARKER} marker before the recipe's code block")
    block = re.search(r"```[a-z]*\n(.*?)```", text[text.index(MARKER) :], re.S).group(1)
    lines = re.sub(r"\\\n\s*", "", block).splitlines()
    return [line.split(" #")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def write_rows(data_dir: Path, pairs: int, workdir: Path, name: str) -> int:
    """`pairs` pairs of each HH-RLHF test split -> rated rows in workdir/name, by prepare-ratings."""
    sources = []
    for subset in ("helpful", "harmless"):
        with gzip.open(data_dir / "hh-rlhf" / f"{subset}-base-test.jsonl.gz", "rt") as f:
            rows = [next(f) for _ in range(pairs)]
        source = workdir / f"{subset}-base-first{pairs}.jsonl"  # the name tells prepare-ratings the objective
        source.write_text("".join(rows))
        sources.append(str(source))
    cli = [sys.executable, "-m", "moslim_plugin", "prepare-ratings", "--moslim.format", "hh_rlhf", "--moslim.spec"]
    cli += ["hh", "--data.dataset", ",".join(sources), "--moslim.output", str(workdir / name)]
    subprocess.run(cli, check=True)
    return sum(1 for _ in open(workdir / name))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.small_data_recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--pairs", type=int, default=125, help="pairs per HH-RLHF split (2 rated rows each)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "small_data_recipe.json")
    a = p.parse_args(argv)
    commands = recipe_commands()
    data_file = re.search(r"--data\.dataset (\S+)", commands[0]).group(1)
    workdir = Path(tempfile.mkdtemp(prefix="small-data-"))
    try:
        rows = write_rows(a.data_dir, a.pairs, workdir, data_file)
        # The recipe's `moslim-openrlhf` is this checkout's: its console script beside this interpreter.
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        runs = []
        for command in commands:
            start = time.perf_counter()
            subprocess.run(["bash", "-c", command], cwd=workdir, env=env, check=True)
            runs.append({"command": command, "seconds": time.perf_counter() - start})
        train_dir = re.search(r"--ckpt\.output_dir (\S+)", commands[0]).group(1)
        trained = json.loads((workdir / train_dir / "eval_metrics.json").read_text())
        eval_dir = re.search(r"--output_dir (\S+)", commands[-1]).group(1)
        report = json.loads((workdir / eval_dir / "report.json").read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {"rows": rows, "runs": runs, "train_rm": trained, "evaluate_rm": report}
    total = sum(run["seconds"] for run in runs)
    heads = ", ".join(
        f"{name} accuracy {m['accuracy']:.3f} (majority {m['majority_accuracy']:.3f}), NLL {m['nll']:.3f} "
        f"(prior {m['prior_nll']:.3f})"
        for name, m in trained["metrics"].items()
        if m["n"]
    )
    summary = f"{rows} rows, recipe {total:.0f} s ({trained['global_step']} optimizer steps); held-out: {heads}"
    headline = [{"metric": "small-data recipe wall time (s)", "value": total, "target": "report", "met": None}]
    write_result("small_data_recipe", {**vars(a), "data_dir": str(a.data_dir), "out": str(a.out)}, results,
                 summary, headline, a.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
