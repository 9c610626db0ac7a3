"""The demo's reward models side by side on the same held-out data.

Every demo run trains its RM on the run's samples; runs whose sample stage is identical (same seed and policy: the
samples.jsonl files are byte-equal) hold out the same 20 % of the questions (train-rm's split by question, seed 0),
so their RMs can be compared on the same rows. Three held-out sets, none of them seen in training by any RM here:

- heldout_edits: the held-out questions' samples plus their edits as the CURRENT `pipeline.augment` makes them
  (including the word prefixes either side of each change in the oracle's verdict: the hardest rows);
- heldout_edits_no_pairs: the same without the straddling prefix pairs (the samples and the four other edits: the
  held-out split as the RM stage made it before the pairs were added);
- heldout_samples: the held-out questions' policy samples only: real outputs, no edits;
- base_answers (with --base_eval): the starting policy's greedy answers to the demo's held-out evaluation prompts,
  a cached `eval_base_*.json` of a demo run; other prompts, real outputs.

Macro-F1 per head as train-rm computes it (via `evaluate.rm_agreement`), labels from the oracle. Writes `--out` (JSON)
and the same name with .md. Not a `make bench` script (no `main`): it needs finished demo runs.

    python -m bench.demo_rm_check --samples runs/demo_v6/samples.jsonl \
        --base_eval runs/demo_v6/eval_base_58dbe024b50185d1.json --rms runs/demo_v3/rm runs/demo_v5/rm runs/demo_v6/rm

`--train DIR` first trains a variant of the demo's RM stage into DIR (same rows, split and train-rm settings, with
`--train_backbone`, `--train_pooling`, `--train_epochs`, `--train_lr`, `--train_words` changed, and
`--train_length_pairs` adding the word prefixes either side of every length-band crossing), then checks it with the
`--rms`: what was tried to lift the length head (README, "Reward model").
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from bench import RESULTS_DIR, machine_info
from moslim_plugin.core.scorer import Scorer
from moslim_plugin.data.rm_rows import split_by_group
from moslim_plugin.data.train_rm import TrainRMConfig, train_reward_model
from moslim_plugin.demo.evaluate import rm_agreement
from moslim_plugin.demo.oracle import demo_spec, length_level
from moslim_plugin.demo.pipeline import RM_SETTINGS, augment, judge
from moslim_plugin.demo.real_models import minilm_path, smollm2_path


def length_pairs(samples, spec) -> list[dict]:
    """The word prefixes either side of EVERY place a sample's length level changes (words 20/21 and 32/33), with
    the oracle's labels; the RM stage's `augment` adds one pair per sample, at one of its verdict changes."""
    rows = []
    for s in samples:
        prefixes = [s["response"][: m.end()] for m in re.finditer(r"\S+", s["response"])]
        for k in range(1, len(prefixes)):
            if length_level(prefixes[k]) != length_level(prefixes[k - 1]):
                rows += [{"question": s["question"], "response": prefixes[i], "labels": judge(prefixes[i], spec),
                          "edit": "pair"} for i in (k - 1, k)]  # fmt: skip
    return rows


def main_run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", required=True, help="a demo run's samples.jsonl (every RM must be trained on it)")
    p.add_argument("--rms", nargs="*", default=[], help="reward-model folders (a demo run's rm/)")
    p.add_argument("--train", default=None, help="train a variant of the demo's RM stage into this folder first")
    p.add_argument("--train_backbone", default="minilm", help="minilm (the demo's), smollm2 or a backbone folder")
    p.add_argument("--train_pooling", default="auto", choices=["auto", "last", "cls", "mean"])
    p.add_argument("--train_epochs", type=int, default=8, help="the demo's full preset: 8")
    p.add_argument("--train_lr", type=float, default=1e-4, help="the demo's --moslim.rm_lr: 1e-4")
    p.add_argument("--train_length_pairs", action="store_true", help="add the pairs at every length-band crossing")
    p.add_argument("--train_words", default="numbered", choices=["numbered", "plain"], help="the stage's: numbered")
    p.add_argument("--base_eval", default=None, help="a demo run's eval_base_*.json: the starting policy's answers")
    p.add_argument("--out", default=str(RESULTS_DIR / "demo_rm_check.json"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if not args.rms and not args.train:
        p.error("give --rms, --train or both")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = demo_spec()
    samples = [json.loads(line) for line in Path(args.samples).read_text().splitlines()]
    rows = [{"question": s["question"], "response": s["response"], "labels": s["labels"]} for s in samples]
    # The demo's RM stage: samples + augment(seed 0), split by question with the stage's ratio and seed.
    edits = augment(samples, spec, seed=0)
    _, heldout, _ = split_by_group(rows + edits, RM_SETTINGS["eval_ratio"], RM_SETTINGS["seed"])
    trained = None
    if args.train:
        named = {"minilm": minilm_path, "smollm2": smollm2_path}
        backbone = named[args.train_backbone]() if args.train_backbone in named else args.train_backbone
        extra = length_pairs(samples, spec) if args.train_length_pairs else []
        config = TrainRMConfig(
            model_name_or_path=str(backbone), spec=spec, output_dir=args.train, micro_batch_size=16, batch_size=16,
            max_epochs=args.train_epochs, lr=args.train_lr, pooling=args.train_pooling,
            **{**RM_SETTINGS, "number_words": args.train_words == "numbered"}, overwrite=True, device="cpu",
        )  # fmt: skip
        trained = train_reward_model(config, rows + edits + extra)
        args.rms = [*args.rms, args.train]
    # In rm_agreement's form (prompt, response, the oracle's levels), as the demo's evaluation answers already are;
    # a sample has no "edit" key, an edit names its kind.
    answers = [{"prompt": r["question"], "response": r["response"], "achieved": r["labels"], "edit": r.get("edit")}
               for r in heldout]  # fmt: skip
    sets = {
        "heldout_edits": answers,
        "heldout_edits_no_pairs": [a for a in answers if a["edit"] != "pair"],
        "heldout_samples": [a for a in answers if a["edit"] is None],
    }
    if args.base_eval:
        sets["base_answers"] = json.loads(Path(args.base_eval).read_text())["samples"]
    results = {}
    for rm in args.rms:
        scorer = Scorer.from_pretrained(rm)
        results[rm] = {name: {n: round(m["macro_f1"], 4) for n, m in rm_agreement(spec, scorer, answers).items()}
                       for name, answers in sets.items()}  # fmt: skip
        print(rm, json.dumps(results[rm]), flush=True)
    payload = {"machine": machine_info(), "config": vars(args), "rows": {k: len(v) for k, v in sets.items()},
               "macro_f1": results}  # fmt: skip
    if trained:  # train-rm's own report: its held-out split holds the added pairs too, and its seconds
        payload["trained"] = {k: trained[k] for k in ("train_rows", "eval_rows", "train_seconds", "selection")}
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    md = ["| reward model | " + " | ".join(f"{s} ({len(sets[s])} rows)" for s in sets) + " |",
          "| --- |" + " --- |" * len(sets)]  # fmt: skip
    for rm, by_set in results.items():
        cells = [" / ".join(f"{by_set[s][n]:.3f}" for n in spec.names) for s in sets]
        md.append(f"| `{rm}` | " + " | ".join(cells) + " |")
    md += ["", f"Macro-F1 per head ({' / '.join(spec.names)}). Command: `python -m bench.demo_rm_check "
           f"{' '.join(sys.argv[1:] if argv is None else argv)}`"]  # fmt: skip
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main_run())
