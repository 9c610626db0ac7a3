"""Can a numeral in the text fool a reward model's length head? (README, "Reward model": the numbered-words weakness.)

Every sample of a demo run with <= 18 words (level 0 by the oracle, and still level 0 with one word more) gets one
numeral appended; the share each RM still classifies as level 0 is printed, before and after, per numeral. Not a
`make bench` script: it needs finished demo runs.

    python -m bench.numeral_probe --samples runs/demo_v7/samples.jsonl --rms runs/demo_v6/rm runs/demo_v7/rm
"""

import argparse
import json
import re
from pathlib import Path

import torch

from moslim_plugin.core.scorer import Scorer
from moslim_plugin.demo.oracle import demo_spec, length_level


def main_run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", required=True, help="a demo run's samples.jsonl")
    p.add_argument("--rms", nargs="+", required=True, help="reward-model folders (a demo run's rm/)")
    p.add_argument("--numerals", nargs="+", default=["21", "25", "33", "40"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = [json.loads(line) for line in Path(args.samples).read_text().splitlines() if line.strip()]
    short = [s for s in samples if len(re.findall(r"\S+", s["response"])) <= 18]
    questions = [s["question"] for s in short]
    k = demo_spec().names.index("length")
    results = {}
    for rm in args.rms:
        scorer = Scorer.from_pretrained(rm)
        before = (scorer.classify(questions, [s["response"] for s in short])[:, k].argmax(-1) == 0).float().mean()
        for numeral in args.numerals:
            edited = [f"{s['response']} {numeral}" for s in short]
            assert all(length_level(e) == 0 for e in edited)  # one word more: still <= 20 words
            after = (scorer.classify(questions, edited)[:, k].argmax(-1) == 0).float().mean()
            results[f"{rm} +{numeral}"] = dict(n=len(short), level0_before=before.item(), level0_after=after.item())
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_run())
