"""Rollout samples/s of the local RL driver: HF `model.generate` (what the driver first used) vs what it uses now.

SmolLM2-135M-Instruct, the demo's training prompts through the chat template, 48 new tokens, T=0.7, top-p 1. Two
shapes: the demo's RL step (8 prompts x 4 samples per prompt) and 32 distinct prompts. Four variants:
`hf_b16` is the old `generate` body verbatim (HF generate, 16 sequences per call, the fp32 policy); `loop_b32` is
`policy.generate` (rollout.decode, KV-cached, inverse-CDF sampling) on the fp32 policy, 32 rows per forward (what
the evaluation decodes with); `copy_fp32_b32` / `copy_bf16_b32` run it on the driver's rollout copy
(`policy.rollout_copy`: eager attention, fp32 / bf16; `--moslim.rollout_dtype`, bf16 the default). The machine's
cores are shared, so the variants run interleaved (A, B, C, D, A, B, ...) and the headline is the median over
repeats of the paired ratio of samples/s, not absolute seconds. Also checks that greedy output of the loop on the
fp32 policy equals HF's greedy token for token on SmolLM2 (16 prompts, 48 tokens).

Profiles (8 prompts x 4 samples, one thread, 24 decode steps, torch.profiler). HF generate (the old driver): 91 % in
the model's forwards, 9 % bookkeeping. The KV-cached loop on the fp32 policy: matmuls 54 %, copies 12 %,
`torch.multinomial` 45 ms a step (one exponential draw per vocabulary entry: 32 x 49k), SDPA 40 ms a step (its CPU
kernel costs 1.3 ms per layer for one query token). Hence inverse-CDF sampling (one uniform per row), eager attention
in the rollout copy, and bf16 weights there: this CPU has avx512_bf16, where a bf16 matmul at 32 rows runs at about
twice fp32's rate (a one-off check: 35-40 vs 64-79 GFLOP/s per core, 576x1536 and 576x49152 weights). On a CPU
without bf16 support, `--moslim.rollout_dtype fp32`. Dynamic int8 (quantize_dynamic) was slower here: not used.

    python -m bench.bench_rollout [--repeats 2] [--threads 1] [--shapes demo_8x4 distinct_32]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench import RESULTS_DIR, figure, write_result

PROMPTS = Path(__file__).resolve().parent.parent / "moslim_plugin" / "demo" / "prompts" / "prompts_train.txt"


@torch.no_grad()
def hf_generate(model, tokenizer, messages_list, max_new_tokens, temperature=1.0, top_p=1.0, batch_size=16):
    """The driver's `generate` before this change (HF generate in left-padded batches): the baseline."""
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_list]
    response_ids, eos = [], tokenizer.eos_token_id
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = temperature > 0
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
            top_p=top_p if sample else None, top_k=0 if sample else None, eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        for i in range(out.shape[0]):
            ids = out[i, enc.input_ids.shape[1] :].tolist()
            response_ids.append(ids[: ids.index(eos) + 1] if eos in ids else ids)
    return response_ids


def plot(results: dict, path: Path) -> None:
    with figure(path, figsize=(7, 4)) as (fig, ax):
        for i, res in enumerate(results["shapes"].values()):
            for j, variant in enumerate(res["paired_ratio"]):
                ratios = res["paired_ratio"][variant]
                x = i * 4 + j
                ax.bar(x, statistics.median(ratios), color=f"C{j}", label=variant if i == 0 else None)
                ax.plot([x] * len(ratios), ratios, "k.", ms=4)
        ax.axhline(2.0, color="red", ls="--", lw=1, label="target 2x")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks([i * 4 + 1 for i in range(len(results["shapes"]))], list(results["shapes"]))
        ax.set_ylabel("samples/s ratio (variant / HF generate)")
        ax.set_title("Rollout speed-up, median of interleaved pairs (dots: repeats)")
        ax.legend(fontsize=8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument(
        "--shapes", nargs="+", default=["demo_8x4", "distinct_32"], choices=["demo_8x4", "distinct_32"]
    )
    parser.add_argument("--greedy_prompts", type=int, default=16, help="prompts of the greedy check (0: skip)")
    # On a busy machine one thread is faster (two threads wait for each other at every op); both sides get the same.
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from moslim_plugin.demo.policy import generate, load_policy, rollout_copy
    from moslim_plugin.demo.real_models import smollm2_path

    model, tok = load_policy(smollm2_path(), 4)
    questions = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    chat = [[{"role": "user", "content": q}] for q in questions]
    shapes = {"demo_8x4": [m for m in chat[:8] for _ in range(4)], "distinct_32": chat[:32]}
    shapes = {name: shapes[name] for name in args.shapes}
    rollout_bf16, rollout_fp32 = rollout_copy(model, "bf16"), rollout_copy(model, "fp32")
    variants = {
        "hf_b16": lambda msgs: hf_generate(model, tok, msgs, args.max_new_tokens, args.temperature, batch_size=16),
        "loop_b32": lambda msgs: generate(
            model, tok, msgs, args.max_new_tokens, args.temperature, batch_size=32, desc=False)[1],
        "copy_fp32_b32": lambda msgs: generate(
            rollout_fp32, tok, msgs, args.max_new_tokens, args.temperature, batch_size=32, desc=False)[1],
        "copy_bf16_b32": lambda msgs: generate(
            rollout_bf16, tok, msgs, args.max_new_tokens, args.temperature, batch_size=32, desc=False)[1],
    }  # fmt: skip

    greedy, mismatches = chat[: args.greedy_prompts], None  # None: not checked (--greedy_prompts 0)
    if greedy:
        greedy_hf = hf_generate(model, tok, greedy, args.max_new_tokens, 0.0)
        greedy_loop = generate(model, tok, greedy, args.max_new_tokens, 0.0, batch_size=16, desc=False)[1]
        mismatches = sum(a != b for a, b in zip(greedy_hf, greedy_loop))

    results = {"greedy_rows_differing_from_hf": mismatches, "shapes": {}}
    bar = tqdm(total=len(shapes) * args.repeats * len(variants), desc="bench_rollout")
    for shape, msgs in shapes.items():
        runs = {v: [] for v in variants}
        for rep in range(args.repeats):
            for name, fn in variants.items():  # interleaved: every repeat runs all variants back to back
                torch.manual_seed(rep)
                t0 = time.perf_counter()
                responses = fn(msgs)
                seconds = time.perf_counter() - t0
                runs[name].append({"seconds": seconds, "samples_per_s": len(msgs) / seconds,
                                   "mean_response_tokens": sum(map(len, responses)) / len(responses)})  # fmt: skip
                bar.update(1)
        base = runs["hf_b16"]
        paired = {f"{name} / hf_b16": [r["samples_per_s"] / b["samples_per_s"] for r, b in zip(runs[name], base)]
                  for name in variants if name != "hf_b16"}  # fmt: skip
        results["shapes"][shape] = {"runs": runs, "paired_ratio": paired}
    bar.close()

    plot(results, RESULTS_DIR / "bench_rollout.png")
    headline = []
    for shape, res in results["shapes"].items():
        for v, ratios in res["paired_ratio"].items():
            value = statistics.median(ratios)
            driver = v.startswith("copy_bf16")  # what the RL driver samples with by default: the 2x target
            headline.append({"metric": f"{shape} {v} samples/s", "value": round(value, 2),
                             "target": ">= 2" if driver else "-", "met": value >= 2 if driver else None})  # fmt: skip
    if greedy:
        metric = f"greedy rows differing from HF generate (of {len(greedy)})"
        headline.append({"metric": metric, "value": mismatches, "target": "0", "met": mismatches == 0})
    summary = ", ".join(f"{h['metric']}: {h['value']}" for h in headline)
    config = {**vars(args), "model": "SmolLM2-135M-Instruct", "top_p": 1.0, "interleaved": True}
    write_result("bench_rollout", config, results, summary, headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
