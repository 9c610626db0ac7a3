"""RM training throughput: MOSLIM's classification trainer vs OpenRLHF's pairwise RewardModelTrainer, same data.

Both train all-MiniLM-L6-v2 on the same real HH-RLHF preference pairs (helpful-base and harmless-base test splits),
same optimizer steps, pairs per step, learning rate and scheduler, on the same strategy (`train_rm.TorchStrategy`
on CPU; see bench/hh_rlhf_check.py for why OpenRLHF's trainer cannot get its DeepSpeed strategy here). A labelled
comparison is one (chosen, rejected) pair: OpenRLHF forwards both sequences together, MOSLIM trains on the two
classification rows the pair becomes. Reported: training-loop seconds per pair (model load, dataset building and
evaluation excluded) per repeat, and the throughput ratio MOSLIM / OpenRLHF.

    nice -n 10 .venv/bin/python -m bench.bench_rm_training
"""

import argparse
import os
import random
import statistics
import tempfile

from bench import write_result
from bench.hh_rlhf_check import load_pairs, per_subset, train_moslim, train_openrlhf
from moslim_plugin.integration import compat


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch_pairs", type=int, default=8)
    p.add_argument("--micro_batch_pairs", type=int, default=8)
    p.add_argument("--max_len", type=int, default=160)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    compat.install()
    from transformers import AutoTokenizer

    from moslim_plugin.demo.real_models import minilm_path

    backbone = minilm_path()
    pairs, _ = load_pairs(a.data_dir, [AutoTokenizer.from_pretrained(backbone)], a.max_len)
    train_pairs = per_subset(pairs, a.steps * a.batch_pairs, random.Random(a.seed))
    seconds = {"moslim": [], "openrlhf": []}
    for _ in range(a.repeats):
        # Alternate the two so that a slow phase of a shared machine hits both alike.
        with tempfile.TemporaryDirectory(prefix="rm-bench-") as workdir:
            seconds["moslim"].append(train_moslim(train_pairs, [], backbone, a, workdir)[1])
            seconds["openrlhf"].append(train_openrlhf(train_pairs, [], backbone, a, workdir)[1])
    per_pair = {name: [s / len(train_pairs) for s in times] for name, times in seconds.items()}
    median = {name: statistics.median(times) for name, times in per_pair.items()}
    ratio = median["openrlhf"] / median["moslim"]  # > 1: MOSLIM processes more pairs per second
    results = {
        "pairs_per_repeat": len(train_pairs),
        "loop_seconds": seconds,
        "seconds_per_pair": per_pair,
        "median_seconds_per_pair": median,
        "throughput_ratio_moslim_over_openrlhf": ratio,
    }
    summary = (
        f"RM training, seconds per labelled pair (median of {a.repeats}): MOSLIM classification "
        f"{median['moslim']:.3f} s vs OpenRLHF pairwise {median['openrlhf']:.3f} s; throughput ratio {ratio:.2f}"
    )
    headline = [
        {
            "metric": "RM training throughput MOSLIM / OpenRLHF pairwise (pairs per second)",
            "value": ratio,
            "target": ">= 0.95 (parity: same sequences per pair)",
            "met": ratio >= 0.95,
        }
    ]
    write_result("bench_rm_training", vars(a), results, summary, headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
