"""Can a numeral in the text fool a reward model's length head? The fooling test of the numbered-words RM.

Every sample of a finished demo run short enough to stay at the oracle's shortest length level with one word more
(<= 19 words at bands 20 / 32) gets each numeral 1-100 appended ("... cat. 21") and prepended ("21 Sure, ..."): one
word more, the same level by the oracle. Per reward model, the share of these edited answers whose predicted length
level (the head's most likely class) differs from the one it predicts for the unedited answer is the fooling rate
(target: <= 1 %), given per numeral where any is fooled. The length head's held-out macro-F1 is what train-rm
measured on the RM's held-out split (`eval_metrics.json` beside each RM; the demo's report.json copies it; target:
>= 0.98). Not a `make bench` script (no `main`): it needs a demo run's samples and RM (the RM stage done is enough).

    python -m bench.numeral_probe --demo_dir runs/demo
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from bench import RESULTS_DIR, write_result
from moslim_plugin.core.scorer import Scorer
from moslim_plugin.demo.oracle import LENGTH_BANDS, length_level

MAX_CHANGED, MIN_MACRO_F1 = 0.01, 0.98


def main_run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo_dir", required=True, help="a demo run (samples.jsonl, rm/ with its eval_metrics.json)")
    p.add_argument("--rms", nargs="*", default=None, help="reward-model folders to probe (default: the run's rm/)")
    p.add_argument("--numerals", type=int, nargs=2, default=[1, 100], help="first and last numeral")
    p.add_argument("--out", default=str(RESULTS_DIR / "numeral_probe.json"))
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.demo_dir)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines() if line.strip()]
    short = [s for s in samples if len(re.findall(r"\S+", s["response"])) < LENGTH_BANDS[0]]
    numerals = range(args.numerals[0], args.numerals[1] + 1)
    edits = [(s["question"], f"{s['response']} {n}", n, "append") for s in short for n in numerals]
    edits += [(s["question"], f"{n} {s['response']}", n, "prepend") for s in short for n in numerals]
    assert all(length_level(text) == 0 for _, text, _, _ in edits)  # one word more: still the shortest level
    results, headline = {}, []
    for rm in args.rms or [str(run / "rm")]:
        scorer = Scorer.from_pretrained(rm)
        k = scorer.model.spec.names.index("length")
        before = scorer.classify([s["question"] for s in short], [s["response"] for s in short])[:, k].argmax(-1)
        after = scorer.classify([q for q, _, _, _ in edits], [t for _, t, _, _ in edits])[:, k].argmax(-1)
        changed = after != torch.cat([before.repeat_interleave(len(numerals))] * 2)
        per_numeral = {}
        for (_, _, n, where), c in zip(edits, changed.tolist()):
            per_numeral.setdefault(f"{where} {n}", []).append(c)
        fooled = {key: sum(v) for key, v in per_numeral.items() if sum(v)}
        share = changed.float().mean().item()
        macro_f1 = json.loads((Path(rm) / "eval_metrics.json").read_text())["metrics"]["length"]["macro_f1"]
        results[rm] = {
            "short_answers": len(short),
            "edited_answers": len(edits),
            "changed": int(changed.sum()),
            "changed_share": share,
            "predicted_level0_before": (before == 0).float().mean().item(),
            "fooled_per_numeral": fooled,
            "length_macro_f1_heldout": macro_f1,
        }
        print(rm, json.dumps({k: v for k, v in results[rm].items() if k != "fooled_per_numeral"}), flush=True)
        headline += [{"metric": f"{Path(rm).parent.name}: edited answers whose predicted length level changes",
                      "value": share, "target": f"<= {MAX_CHANGED}", "met": share <= MAX_CHANGED},
                     {"metric": f"{Path(rm).parent.name}: length head macro-F1 on its held-out split",
                      "value": macro_f1, "target": f">= {MIN_MACRO_F1}", "met": macro_f1 >= MIN_MACRO_F1}]  # fmt: skip
    first = next(iter(results.values()))
    summary = (
        f"numerals {args.numerals[0]}-{args.numerals[1]} appended and prepended to {len(short)} short answers "
        f"({len(edits)} edits): the length level changed for {first['changed']} ({100 * first['changed_share']:.2f} "
        f"%); held-out macro-F1 of the length head {first['length_macro_f1_heldout']:.3f}"
    )
    command = sys.argv[1:] if argv is None else argv
    config = {"demo_dir": str(run), "rms": args.rms, "numerals": args.numerals, "command": command}
    write_result("numeral_probe", config, results, summary, headline, path=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_run())
