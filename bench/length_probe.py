"""Length probe behind the demo's `length` objective: which sentences and word bands the starting policy follows.

For each candidate set of three length sentences, SmolLM2-135M-Instruct answers the first `--prompts` TRAINING
prompts (never the held-out ones) once per level, greedily and sampled at T=0.7, with the sentence at the end of the
user message and `--max_new_tokens` tokens. Word counts are then judged with several band choices; the gap is the
screening's: mean over levels L of P(level L | asked L) - P(level L | asked another level).

    python -m bench.length_probe            # writes docs/demo/length_probe.json and prints the table
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

CANDIDATES = {
    "A": ["Answer in one short sentence.", "Answer in two or three sentences.",
          "Answer in detail, with several sentences."],
    "B": ["Answer in one short sentence of at most ten words.", "Answer in about two sentences.",
          "Answer in detail, with at least four sentences."],
    "C": ["Answer in a few words.", "Answer in one or two sentences.", "Answer at length, in a full paragraph."],
}  # fmt: skip
BANDS = [(15, 30), (20, 32)]


def gap_and_shares(rows, bands):
    level = lambda words: sum(words > b for b in bands)  # noqa: E731
    gaps = []
    for target in range(3):
        asked = [level(w) == target for lv, w in rows if lv == target]
        other = [level(w) == target for lv, w in rows if lv != target]
        gaps.append(sum(asked) / len(asked) - sum(other) / len(other))
    shares = [sum(level(w) == target for _, w in rows) / len(rows) for target in range(3)]
    return sum(gaps) / 3, shares


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--out", default="docs/demo/length_probe.json")
    a = p.parse_args(argv)
    from moslim_plugin.demo.evaluate import builtin_prompts
    from moslim_plugin.demo.policy import generate, load_policy
    from moslim_plugin.demo.real_models import smollm2_path
    from moslim_plugin.integration import compat

    compat.install()
    model, tokenizer = load_policy(smollm2_path())
    prompts = builtin_prompts("train")[: a.prompts]
    results = []
    for temperature in (0.0, 0.7):
        for name, sentences in CANDIDATES.items():
            chats = [[{"role": "user", "content": f"{q}\n\n{s}"}] for s in sentences for q in prompts]
            torch.manual_seed(0)
            _, _, texts = generate(model, tokenizer, chats, a.max_new_tokens, temperature, batch_size=72,
                                   desc=f"{name} T={temperature}")  # fmt: skip
            rows = [(i // len(prompts), len(t.split())) for i, t in enumerate(texts)]
            medians = [statistics.median(w for lv, w in rows if lv == L) for L in range(3)]
            entry = {"candidate": name, "sentences": sentences, "temperature": temperature, "median_words": medians}
            for bands in BANDS:
                gap, shares = gap_and_shares(rows, bands)
                entry[f"bands_{bands[0]}_{bands[1]}"] = {"gap": gap, "shares": shares}
            results.append(entry)
            print(json.dumps(entry), flush=True)
    Path(a.out).write_text(json.dumps({"config": vars(a), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
