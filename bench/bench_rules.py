"""What an exact rule objective costs next to a learned head: the demo's two rules against a MiniLM reward model.

Responses: the last assistant turns of the real HH-RLHF helpful-base test split (../shared/data), `--samples` of
them. Timed, each as the median of `--repeats` passes over all responses, one torch thread:

- `rules`: the levels of the demo's rule objectives (`length`: word_count bands 20/32, `format`: bulleted_list),
  `Objective.level` per response and rule, nothing else;
- `rules_scorer`: `Scorer.score` of a rules-only spec at `--batch` rows per call (rule levels, one-hot, the
  `moslim` mapping, validation): the whole reward of a rules-only run;
- `rm_classify`: `Scorer.classify` of a MOSLIM reward model with one learned head on the real all-MiniLM-L6-v2
  backbone (random head: the cost, not the values), at the same batch and `--max_length` tokens: the RM's share of
  a reward, tokenisation and truncation of the (long, multi-turn) HH questions included.

The headline is the rules' share of the reward model's time per sample, target under 1 %.

    python -m bench.bench_rules [--samples 512] [--batch 32] [--repeats 3]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench import write_result
from moslim_plugin.core.rm import MultiHeadRewardModel
from moslim_plugin.core.scorer import Scorer
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.ratings import read_records, split_hh_dialogue
from moslim_plugin.demo.oracle import RULES, demo_spec

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh-rlhf" / "helpful-base-test.jsonl.gz"


def passes(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=192, help="RM tokens per pair (the demo's RM: 192)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pairs = [split_hh_dialogue(row["chosen"]) for row in read_records(str(DATA))[: args.samples]]
    questions, responses = [q for q, _ in pairs], [r for _, r in pairs]
    rules = demo_spec(rules=tuple(RULES))
    rules_only = load_spec({"objectives": [rules.objectives[i].to_dict() for i in range(2)]})
    requests = [{"length": i % 3} if i % 2 else {"format": (i // 2) % 2} for i in range(len(pairs))]

    def rule_levels():
        for q, r in zip(questions, responses):
            for objective in rules_only.objectives:
                objective.level(q, r)

    rules_scorer = Scorer(None, None, spec=rules_only, batch_size=args.batch)

    def score_rules():
        for start in range(0, len(pairs), args.batch):
            end = start + args.batch
            rules_scorer.score(questions[start:end], responses[start:end], requests[start:end])

    from transformers import AutoTokenizer

    from moslim_plugin.demo.real_models import minilm_path

    learned = load_spec({"objectives": [rules.objectives[2].to_dict()]})  # formality: a learned head
    model = MultiHeadRewardModel.from_backbone(minilm_path(), learned)
    rm = Scorer(model, AutoTokenizer.from_pretrained(minilm_path()), max_length=args.max_length, batch_size=args.batch)

    def rm_classify():
        for start in tqdm(range(0, len(pairs), args.batch), desc="rm classify", leave=False):
            rm.classify(questions[start : start + args.batch], responses[start : start + args.batch])

    results = {}
    for name, fn in (("rules", rule_levels), ("rules_scorer", score_rules), ("rm_classify", rm_classify)):
        seconds = passes(fn, args.repeats)
        results[name] = {
            "seconds_per_pass": seconds,
            "median_us_per_sample": statistics.median(seconds) * 1e6 / len(pairs),
        }
    per_sample = {name: r["median_us_per_sample"] for name, r in results.items()}
    share = per_sample["rules"] / per_sample["rm_classify"]
    metric = "demo rules / MiniLM RM classify, per sample"
    headline = [{"metric": metric, "value": share, "target": "< 0.01", "met": share < 0.01}]
    summary = (
        f"per sample: the demo's two rules {per_sample['rules']:.1f} us, a rules-only Scorer.score "
        f"{per_sample['rules_scorer']:.1f} us, the MiniLM RM's classify {per_sample['rm_classify']:.0f} us "
        f"(batch {args.batch}, {args.max_length} tokens): rules = {share:.2%} of the RM"
    )
    config = {k: getattr(args, k) for k in ("samples", "batch", "max_length", "repeats", "threads")}
    config["data"] = "hh-rlhf helpful-base-test, last assistant turn of 'chosen'"
    write_result("bench_rules", config, results, summary, headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
