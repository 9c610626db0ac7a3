"""Cost of relabelling per rollout (issue 15, point 5): seconds per RL step with 0, 1, 2 and 4 copies per rollout,
as ratios to no relabelling, measured in ONE run on the real SmolLM2-135M-Instruct policy.

Configurations run in interleaved rounds (one step each, after one warm-up step) so drifting load on a shared
machine hits them alike; the median step time per configuration is the result. The demo's objectives and oracle,
with `--moslim.relabel all`, so every rollout has 6 other single-objective requests to draw its copies from. A step
= generation + reward + old log-probs + update; copies add forward/backward passes only, no generation and no
extra judging (the oracle judges each distinct response once).

    python -m bench.bench_relabel [--rounds 3] [--prompts 4] [--samples 2] [--tokens 24] [--threads 1]
"""

import argparse
import statistics
import tempfile

import torch
from tqdm import tqdm

from bench import write_result
from moslim_plugin.core.directives import apply_directive
from moslim_plugin.demo.evaluate import builtin_prompts
from moslim_plugin.demo.local_rl import load_policy, parse_rl_args, train_policy
from moslim_plugin.demo.oracle import demo_spec, judge, request_hits
from moslim_plugin.demo.real_models import smollm2_path

COPIES = (0, 1, 2, 4)
SPEC = demo_spec()


def messages(question, request):
    return apply_directive(SPEC, request, question, "user_suffix")


def oracle_reward(questions, responses, requests):
    judged = {text: judge(text, SPEC) for text in set(responses)}  # once per distinct response
    return torch.tensor([request_hits(judged[t], rq) for t, rq in zip(responses, requests)]), {}


def rows(questions):
    pairs = [{n: lv} for n, levels in zip(SPEC.names, SPEC.levels) for lv in range(levels)]
    return [{"question": q, "request": pairs[i % len(pairs)], "messages": messages(q, pairs[i % len(pairs)])}
            for i, q in enumerate(questions)]  # fmt: skip


def one_step(copies: int, model, tokenizer, questions, args_common, out_dir) -> dict:
    relabel = ["--moslim.relabel", "all", "--moslim.relabel_copies", str(copies)] if copies else []
    args = parse_rl_args(args_common + relabel + ["--ckpt.output_dir", out_dir])
    args.data.max_samples = args.rollout.batch_size
    spec_kw = dict(spec=SPEC, prompt_fn=messages) if copies else {}
    result = train_policy(args, rows(questions), oracle_reward, model=model, tokenizer=tokenizer, progress=False,
                          **spec_kw)  # fmt: skip
    return result["history"][0]


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    copies = sorted(results, key=int)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.bar(copies, [results[c]["ratio_to_none"] for c in copies], color="tab:blue")
    ax.set_xlabel("copies per rollout")
    ax.set_ylabel("step time / on-policy step")
    ax.set_title("relabelling cost per rollout")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_relabel", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=4, help="prompts per rollout")
    p.add_argument("--samples", type=int, default=2, help="samples per prompt")
    p.add_argument("--tokens", type=int, default=24, help="max new tokens")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    common = [
        "--rollout.batch_size", str(a.prompts), "--rollout.n_samples_per_prompt", str(a.samples),
        "--rollout.max_new_tokens", str(a.tokens), "--rollout.temperature", "0.7", "--algo.kl.init_coef", "0",
        "--actor.adam.lr", "1e-5", "--rollout.micro_batch_size", "32",
    ]  # fmt: skip
    model, tokenizer = load_policy(smollm2_path(), 4)
    questions = builtin_prompts("train")[: a.prompts]
    times = {c: [] for c in COPIES}
    gen = {c: [] for c in COPIES}
    copies_done = {}
    with tempfile.TemporaryDirectory() as tmp:
        one_step(1, model, tokenizer, questions, common, tmp)  # warm-up: allocator, kernels, file cache
        for _ in tqdm(range(a.rounds), desc="rounds"):
            for c in COPIES:
                log = one_step(c, model, tokenizer, questions, common, tmp)
                times[c].append(log["seconds_step"])
                gen[c].append(log["seconds_generate"])
                copies_done[c] = log.get("relabel/copies_per_rollout", 0.0)
    rollouts = a.prompts * a.samples
    med = {c: statistics.median(times[c]) for c in COPIES}
    results = {
        str(c): {
            "copies_per_rollout": copies_done[c],
            "seconds_step": times[c],
            "seconds_generate": gen[c],
            "median_seconds_per_rollout": med[c] / rollouts,
            "ratio_to_none": med[c] / med[0],
            "median_seconds_train": statistics.median(t - g for t, g in zip(times[c], gen[c])),
        }
        for c in COPIES
    }
    summary = ", ".join(f"{c} cop{'y' if c == 1 else 'ies'} x{med[c] / med[0]:.2f}" for c in COPIES[1:])
    summary = f"relabelling cost per rollout vs none ({med[0] / rollouts:.2f} s/rollout): {summary}"
    headline = [
        {"metric": f"step time, {c} copies / none", "value": round(med[c] / med[0], 3), "target": "reported",
         "met": None}
        for c in COPIES[1:]
    ]  # fmt: skip
    config = vars(a) | {"policy": "SmolLM2-135M-Instruct", "trainable_layers": 4, "relabel": "all",
                        "objectives": list(SPEC.names)}  # fmt: skip
    path = write_result("bench_relabel", config, results, summary, headline)
    plot(results, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
