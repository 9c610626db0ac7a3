"""Evaluate a MOSLIM reward model on a file: per-head metrics on rated rows, or pairwise accuracy on pairs.

Rated rows (`prepare-ratings` output, `{"question", "response", "labels"}`): per head accuracy, macro-F1, mean
absolute level error, expected calibration error, negative log-likelihood and the confusion matrix, next to two
baselines a model must beat (always the majority class; always the class prior, both taken from the file itself).
Pairs (`{"question", "chosen", "rejected"}` with responses, or HH-RLHF's whole `chosen`/`rejected` dialogues):
each side is scored through the mapping, as at reward time, for a request (which levels of which objectives the
chosen side should have), found per row in this order: the row's own `"request"` ({"helpful": 1}), else
`--moslim.request`, else, for a file named helpful*/harmless* (HH-RLHF's), that objective at its top level. Every
row's request is checked against the model's spec before the model is loaded. Pairwise accuracy counts a tie as half
a win (and reports the ties); every figure has a bootstrap 95 % interval.
Rule objectives (`rule:` in the spec) are reported as `exact`: their accuracy is the share of labels that agree with
the rule, with no NLL or calibration error (an exact answer has none). `--model` may be the spec file of a spec of
rules only. Writes report.md, report.json and report.png into `--output_dir`.

    moslim-openrlhf evaluate-rm --model ./rm --data.dataset held_out.jsonl --output_dir ./rm-eval
    moslim-openrlhf evaluate-rm --model ./rm --data.dataset harmless-base-test.jsonl.gz --output_dir ./hh-eval
"""

import argparse
import json
import os
import random
from pathlib import Path

import torch

from moslim_plugin import UserError, add_threads_flag, positive_int, set_threads, writable
from moslim_plugin.data.ratings import hh_subset, read_records, split_hh_dialogue
from moslim_plugin.data.rm_metrics import IGNORE, head_metrics


def bootstrap_ci(values, resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95 % interval of the mean of `values` (a list of per-item scores)."""
    rng, n = random.Random(seed), len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return [means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]]


def pairwise_accuracy(chosen_scores, rejected_scores) -> dict:
    """Share of pairs where chosen scores higher than rejected; a tie counts half and is reported."""
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_scores, rejected_scores)]
    if not wins:
        raise UserError("pairwise accuracy of zero pairs: the file holds no pair")
    return {
        "n": len(wins),
        "accuracy": sum(wins) / len(wins),
        "ci95": bootstrap_ci(wins),
        "ties": sum(w == 0.5 for w in wins),
    }


def parse_request(text: str | None) -> dict | None:
    """'helpful=1,harmless=1' or a JSON object -> {objective: level}."""
    if not text:
        return None
    try:
        if text.lstrip().startswith("{"):  # a valid one is a dict
            return json.loads(text)
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:  # json.JSONDecodeError included
        raise UserError(f"--moslim.request {text!r}: expected 'objective=level,...' or a JSON object") from None


def evaluate_ratings(scorer, rows) -> dict:
    """Per-head metrics of rows already checked by `load_rows`."""
    spec = scorer.spec
    probs = scorer.classify([r["question"] for r in rows], [r["response"] for r in rows])
    labels = torch.tensor(
        [[IGNORE if r["labels"].get(n) is None else r["labels"][n] for n in spec.names] for r in rows]
    )
    metrics = head_metrics(probs, labels, spec)
    for k, (name, objective) in enumerate(zip(spec.names, spec.objectives)):
        if objective.rule is not None:  # one-hot probabilities: NLL and ECE would only restate the accuracy
            metrics[name] = {key: v for key, v in metrics[name].items() if key not in ("ece", "nll", "prior_nll")}
            metrics[name].update(exact=True, rule=objective.rule)
        if metrics[name]["n"]:
            mask = labels[:, k] != IGNORE
            hits = (probs[mask, k].argmax(-1) == labels[mask, k]).float().tolist()
            metrics[name]["accuracy_ci95"] = bootstrap_ci(hits)
    return {"kind": "ratings", "rows": len(rows), "heads": metrics}


def read_pairs(rows, source: str, request: dict | None, spec) -> dict:
    """Questions, both sides and each pair's request (see the module doc for where it is found), every request
    checked against `spec`: all of it before any model is loaded."""
    from moslim_plugin.core.directives import validate_request

    default, origin = request, "--moslim.request"
    if default is None:
        try:
            subset = hh_subset(source)
        except UserError:
            subset = None
        if subset is not None:
            levels = dict(zip(spec.names, spec.levels))
            default, origin = {subset: levels.get(subset, 2) - 1}, f"the file name ({subset}*)"
    pairs = dict(questions=[], chosen=[], rejected=[], requests=[], default=default)
    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
            raise UserError(f"{where}: expected 'chosen' and 'rejected' strings, got keys {list(row)[:10]}")
        if "question" in row:
            q, c, r = row["question"], row["chosen"], row["rejected"]
        else:
            try:
                (q, c), (other, r) = split_hh_dialogue(row["chosen"]), split_hh_dialogue(row["rejected"])
            except ValueError as e:
                raise UserError(f"{where}: {e}") from None
            if other != q:
                raise UserError(f"{where}: 'chosen' and 'rejected' dialogues differ before their last assistant turn")
        wanted = row.get("request", default)
        if wanted is None:
            raise UserError(
                f"{where}: no request to score the pair for: no 'request' in the row, no --moslim.request (e.g. "
                f"'{spec.names[0]}=1'), and the file name does not start with helpful/harmless (HH-RLHF's)"
            )
        try:
            wanted = validate_request(spec, wanted)
        except UserError as e:
            from_where = "its 'request'" if "request" in row else origin
            raise UserError(f"{where}: the request from {from_where}: {e}") from None
        for key, value in zip(("questions", "chosen", "rejected", "requests"), (q, c, r, wanted)):
            pairs[key].append(value)
    return pairs


def evaluate_pairs(scorer, pairs: dict) -> dict:
    scores = {}
    for side in ("chosen", "rejected"):
        scores[side] = scorer.score(pairs["questions"], pairs[side], pairs["requests"]).rewards.tolist()
    result = pairwise_accuracy(scores["chosen"], scores["rejected"])
    return {"kind": "pairs", "pairs": result, "request": pairs["default"]}


def markdown(report: dict) -> str:
    lines = [f"# Reward model {report['model']} on {report['data']}", ""]
    if report["kind"] == "pairs":
        p = report["pairs"]
        lines += [
            f"Pairwise accuracy (ties = half): **{p['accuracy']:.3f}** "
            f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] over {p['n']} pairs, {p['ties']} ties; chance 0.5.",
        ]
        return "\n".join(lines) + "\n"
    lines += [
        "| head | n | accuracy [95 % CI] | majority | macro-F1 | MAE | ECE | NLL | prior NLL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["heads"].items():
        label = f"{name} (exact: rule {m['rule']['name']})" if m.get("exact") else name
        if not m["n"]:
            lines.append(f"| {label} | 0 | - | - | - | - | - | - | - |")
            continue
        lo, hi = m["accuracy_ci95"]
        probabilistic = " | ".join(f"{m[key]:.3f}" if key in m else "-" for key in ("ece", "nll", "prior_nll"))
        lines.append(
            f"| {label} | {m['n']} | {m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {m['majority_accuracy']:.3f} | "
            f"{m['macro_f1']:.3f} | {m['mae']:.3f} | {probabilistic} |"
        )
    if any(m.get("exact") for m in report["heads"].values()):
        lines += ["", "An exact objective is checked by its rule: its accuracy is how often the labels agree with it."]
    lines += ["", "Confusion matrices (rows = true level, columns = predicted):", ""]
    for name, m in report["heads"].items():
        if m["n"]:
            lines.append(f"- {name}: {m['confusion']}")
    return "\n".join(lines) + "\n"


def draw(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if report["kind"] == "pairs":
        p = report["pairs"]
        ax.bar(
            ["pairwise accuracy"],
            [p["accuracy"]],
            yerr=[[p["accuracy"] - p["ci95"][0]], [p["ci95"][1] - p["accuracy"]]],
        )
        ax.axhline(0.5, color="grey", ls="--", lw=0.8, label="chance")
    else:
        heads = [n for n, m in report["heads"].items() if m["n"]]
        x = range(len(heads))
        acc = [report["heads"][n]["accuracy"] for n in heads]
        ax.bar([i - 0.2 for i in x], acc, 0.4, label="model accuracy")
        ax.bar([i + 0.2 for i in x], [report["heads"][n]["majority_accuracy"] for n in heads], 0.4, label="majority")
        ax.set_xticks(list(x), heads, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"{os.path.basename(str(report['model']))} on {os.path.basename(report['data'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(model, data: str, output_dir=None, request=None, max_length=None, batch_size: int = 16) -> dict:
    """Report dict for `model` (a checkpoint folder or a Scorer) on `data`; written to `output_dir` when given.
    `max_length`: tokens per pair (None: the length train-rm trained the checkpoint at, recorded in its config.json;
    for a checkpoint without it, 512, or the backbone's position limit when smaller)."""
    from moslim_plugin.core.rm import max_positions, saved_spec
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.data.rm_rows import load_rows

    is_scorer = isinstance(model, Scorer)
    spec = model.spec if is_scorer else saved_spec(model)
    positions = None if is_scorer else max_positions(model)
    config = Path(model, "config.json") if not is_scorer else None  # absent for a spec file of rules only
    trained = json.loads(config.read_text()).get("moslim", {}).get("max_len") if config and config.is_file() else None
    max_length = max_length or trained or min(512, positions or 512)
    if positions and max_length > positions:
        raise UserError(
            f"--data.max_len {max_length} exceeds what the reward model {model} can read (its backbone's "
            f"max_position_embeddings {positions}): pass at most {positions}"
        )
    # The file, its requests and the output folder before the model: their errors then come at once, not after
    # loading it.
    rows = read_records(data)
    if not rows:
        raise UserError(f"{data}: the file holds no rows")
    pairs = read_pairs(rows, data, request, spec) if "chosen" in rows[0] else None
    rows = rows if pairs else load_rows(rows, spec, data)
    if output_dir:
        writable(output_dir, "--output_dir")  # made when the report is written: a failed run leaves no folder
    scorer = model if is_scorer else Scorer.from_pretrained(model, max_length=max_length, batch_size=batch_size)
    report = evaluate_pairs(scorer, pairs) if pairs else evaluate_ratings(scorer, rows)
    report = {"model": "<scorer>" if is_scorer else str(model), "data": str(data), "max_length": scorer.max_length,
              **report}  # fmt: skip
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(output_dir, "report.md"), "w") as f:
            f.write(markdown(report))
        try:
            draw(report, os.path.join(output_dir, "report.png"))
        except ModuleNotFoundError as e:  # matplotlib comes with the demo extra; the numbers do not need it
            print(f"no report.png: {e.name} is not installed (pip install 'moslim-plugin[demo]')")
    return report


def build_parser() -> argparse.ArgumentParser:
    first, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(
        prog="moslim-openrlhf evaluate-rm",
        description=first,
        epilog=rest,  # what is measured and how a pair's request is found
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="reward-model checkpoint folder (train-rm), or the spec file of rules only"
    )
    p.add_argument(
        "--data.dataset", default=None,
        help="rated rows (.jsonl from prepare-ratings) or pairs (default: the rows train-rm held out, "
        "<model>/held_out.jsonl)",
    )  # fmt: skip
    p.add_argument("--output_dir", default=None, help="folder for report.md, report.json, report.png")
    p.add_argument(
        "--moslim.request", default=None,
        help="pairs: 'objective=level,...' (or a JSON object) each pair is scored for, where a row has no 'request' "
        "of its own; default for HH-RLHF's helpful*/harmless* files: that objective at its top level",
    )  # fmt: skip
    p.add_argument("--data.max_len", type=positive_int, default=None,
                   help="tokens per pair (default: the length train-rm trained the model at; for a model without "
                   "that record, 512, or its limit when smaller)")  # fmt: skip
    p.add_argument("--micro_batch_size", type=positive_int, default=16)
    add_threads_flag(p)
    return p


def main(argv=None) -> int:
    from moslim_plugin.data.rm_rows import HELD_OUT_FILE

    args = vars(build_parser().parse_args(argv))
    set_threads(args["threads"])
    data = args["data.dataset"] or os.path.join(args["model"], HELD_OUT_FILE)
    if not os.path.isfile(data) and args["data.dataset"] is None:
        raise UserError(f"no --data.dataset, and {args['model']} has no {HELD_OUT_FILE} (train-rm writes one)")
    report = evaluate(
        args["model"],
        data,
        args["output_dir"],
        parse_request(args["moslim.request"]),
        args["data.max_len"],
        args["micro_batch_size"],
    )
    print(markdown(report))
    return 0
