"""The mapping functions alone: microseconds per 1,000 samples for each built-in, against an RM forward.

Inputs have the helpsteer spec's shape (3 heads: 5, 5 and 2 levels), random probabilities, ~70% of objectives
requested. Each configuration is timed at batch 32 (a scorer batch) and batch 1,000, as the median of `--repeats`
timings of `--calls` calls each, input validation included (it is part of every call). One torch thread by default:
the tensors are tiny (<= 15k elements), and on a shared 2-core machine intra-op threads only add oversubscription
noise (10x slower medians were seen at 2 threads under load); the backbone forward runs with the same setting.
The headline puts the mapping next to what it follows in the scorer: one forward of the real all-MiniLM-L6-v2
backbone at batch 32 x 128 tokens on the same machine, target under 1%.

    python -m bench.bench_mappings [--repeats 5] [--calls 200] [--device cpu]
"""

import argparse
import functools
import statistics

import torch
from tqdm import tqdm

from bench import seconds_per_call, write_result
from moslim_plugin.core.mappings import MappingStats, resolve_mapping

LEVELS = (5, 5, 2)
CONFIGS = {
    "moslim/sample": ("moslim", {"norm": "sample"}),
    "moslim/dataset": ("moslim", {"norm": "dataset"}),
    "moslim/running": ("moslim", {"norm": "running"}),
    "expected_level": ("expected_level", {}),
    "target_logprob": ("target_logprob", {}),
}


def inputs(batch: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    levels = torch.tensor(LEVELS)
    valid = torch.arange(max(LEVELS))[None, :] < levels[:, None]
    logits = torch.randn(batch, len(LEVELS), max(LEVELS), generator=g) * 2
    probs = torch.softmax(logits.masked_fill(~valid, -1e4), -1)
    targets = (torch.rand(batch, len(LEVELS), generator=g) * levels).long()
    targets = targets.masked_fill(torch.rand(batch, len(LEVELS), generator=g) > 0.7, -1)
    return probs.to(device), targets.to(device), levels.to(device)


def backbone_forward_seconds(device: str, repeats: int) -> float:
    from transformers import AutoModel

    from moslim_plugin.demo.real_models import minilm_path

    model = AutoModel.from_pretrained(minilm_path(), dtype=torch.float32).to(device).eval()
    ids = torch.randint(1000, 2000, (32, 128), device=device)
    with torch.no_grad():
        model(input_ids=ids)  # warm-up
        return statistics.median(
            seconds_per_call(lambda: model(input_ids=ids), 1, device) for _ in range(max(3, repeats))
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 1000])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--skip-backbone", action="store_true", help="no MiniLM forward (no headline ratio)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {}
    calibration = MappingStats.from_probs(inputs(256, "cpu", seed=1)[0], LEVELS)
    for label, (name, kwargs) in tqdm(CONFIGS.items(), desc="mappings"):
        fn = resolve_mapping(name)
        results[label] = {}
        for batch in args.batches:
            probs, targets, levels = inputs(batch, args.device)
            stats = MappingStats.from_probs(probs.cpu(), LEVELS) if kwargs.get("norm") == "running" else calibration
            call = functools.partial(fn, probs, targets, levels, stats, **kwargs)
            call()  # warm-up
            per_call = [seconds_per_call(call, args.calls, args.device) for _ in range(args.repeats)]
            results[label][f"batch_{batch}"] = {
                "us_per_1000_samples": [s * 1e6 * 1000 / batch for s in per_call],
                "median_us_per_1000_samples": statistics.median(per_call) * 1e6 * 1000 / batch,
                "median_us_per_call": statistics.median(per_call) * 1e6,
            }

    small = f"batch_{min(args.batches)}"
    headline, forward = [], None
    if not args.skip_backbone:
        forward = backbone_forward_seconds(args.device, args.repeats)
        results["minilm_forward_batch32_len128_us"] = forward * 1e6
        for label in CONFIGS:
            ratio = results[label][small]["median_us_per_call"] / (forward * 1e6)
            headline.append(
                {
                    "metric": f"{label} call / MiniLM forward ({small})",
                    "value": ratio,
                    "target": "< 0.01",
                    "met": ratio < 0.01,
                }
            )
    large = f"batch_{max(args.batches)}"
    summary = (
        "us per 1,000 samples at "
        + large.replace("_", " ")
        + ": "
        + ", ".join(f"{label} {results[label][large]['median_us_per_1000_samples']:.0f}" for label in CONFIGS)
    )
    if forward is not None:
        worst = max(h["value"] for h in headline)
        summary += f"; worst mapping call at {small.replace('_', ' ')} = {worst:.2%} of a MiniLM forward"
    config = {
        "levels": LEVELS,
        "batches": args.batches,
        "repeats": args.repeats,
        "calls": args.calls,
        "device": args.device,
        "request_rate": 0.7,
    }
    write_result("bench_mappings", config, results, summary, headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
