"""Real-data check: MOSLIM classification RM vs OpenRLHF's pairwise RM on HH-RLHF, same backbone, same budget.

Data: the helpful-base and harmless-base test splits in ../shared/data/hh-rlhf, split into training and held-out
parts BY PROMPT (a conversation prefix never lands in both). At the default `--max_len 512` (MiniLM's limit) 96 % of
the pairs fit whole under both tokenizers; the rest are dropped so that neither model sees truncated text. Held-out
pairs are drawn half from each file. Per backbone (`--backbones minilm,smollm2`: all-MiniLM-L6-v2, the SmolLM2-135M
decoder), both models get the same training pairs in the same order, optimizer steps, batch (in pairs = 2
sequences each), learning rate and scheduler:

(a) MOSLIM: `train_rm.train_reward_model` with objectives helpful and harmless (spec `hh`). Each pair gives two
    classification rows: chosen = level 1, rejected = level 0 of its subset's objective; the other head is masked.
    A held-out pair is ranked by the reward the mapping gives when the pair's objective is requested at level 1.
(b) OpenRLHF: its own `RewardDataset` (chosen/rejected dialogues, as `openrlhf.cli.train_rm` reads HH-RLHF),
    `get_llm_for_sequence_regression(..., "reward")`, and `RewardModelTrainer.fit` with its `PairWiseLoss`.
    `RewardModelTrainer` cannot get OpenRLHF's DeepspeedStrategy on a CPU torch build (`setup_distributed` calls
    `torch.cuda.set_device`), so it runs on `TorchStrategy`, the same AdamW + scheduler + accumulation the
    MOSLIM trainer uses here. Weights are loaded in fp32 (OpenRLHF accepts only bf16/fp16; the dtype lookup is
    widened for this run) so neither side is handicapped by precision.

Held-out pairwise accuracy is `evaluate-rm`'s (`evaluate_rm.pairwise_accuracy`: ties count half, bootstrap 95 %
interval). Results are written after each backbone, so a run stopped during the second keeps the first.

Reusing it on other data: `--eval_file FILE` also scores any chosen/rejected file with both trained RMs (HH-RLHF
dialogues, or `{"question", "chosen", "rejected"}` rows, which the pairwise RM reads as one Human/Assistant turn);
the MOSLIM side scores through `evaluate-rm` with its request rules (the row's "request", else `--eval_request`,
else an HH file name), checked before any training. `--keep_models DIR` keeps both RMs (DIR/<backbone>/moslim, a
MOSLIM checkpoint for evaluate-rm and the reward paths; DIR/<backbone>/openrlhf, OpenRLHF's reward model as HF
folder), `--out FILE` writes the JSON (and the PNG beside it) elsewhere than bench/results/, `--threads` sets
torch's CPU threads.

    nice -n 10 .venv/bin/python -m bench.hh_rlhf_check                       # both backbones
    nice -n 10 .venv/bin/python -m bench.hh_rlhf_check --backbones smollm2 --steps 6 --lr 3e-5
    .venv/bin/python -m bench.hh_rlhf_check --backbones minilm --eval_file pairs.jsonl --eval_request helpful=1 \
        --keep_models ./hh-models --out ./hh-check.json --threads 2

The defaults are sized for a shared 2-core CPU and are SMALL (MiniLM 16 steps x 8 pairs); see docs/benchmarks.md
for what they measured and what they cannot show.
"""

import argparse
import contextlib
import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench import RESULTS_DIR, figure, write_result
from moslim_plugin import add_threads_flag, set_threads
from moslim_plugin.data.cpu_strategy import TorchStrategy
from moslim_plugin.data.evaluate_rm import evaluate, pairwise_accuracy, parse_request, read_pairs
from moslim_plugin.data.ratings import read_records, split_hh_dialogue
from moslim_plugin.data.rm_rows import split_by_group
from moslim_plugin.data.train_rm import TrainRMConfig, train_reward_model
from moslim_plugin.integration import compat

SUBSETS = ("helpful", "harmless")


def load_pairs(data_dir, tokenizers, max_len):
    """HH-RLHF pairs that fit max_len tokens whole under every tokenizer (both sides, plus special tokens)."""
    pairs, dropped = [], 0
    for subset in SUBSETS:
        for row in read_records(os.path.join(data_dir, "hh-rlhf", f"{subset}-base-test.jsonl.gz")):
            question, chosen = split_hh_dialogue(row["chosen"])
            other, rejected = split_hh_dialogue(row["rejected"])
            # +16: room for the chat template (SmolLM2) or [CLS]/[SEP] (MiniLM) around the dialogue.
            longest = max(
                len(tok(row[k], add_special_tokens=False)["input_ids"])
                for k in ("chosen", "rejected")
                for tok in tokenizers
            )
            if other != question or chosen == rejected or longest + 16 > max_len:
                dropped += 1
                continue
            pairs.append(
                dict(
                    subset=subset,
                    question=question,
                    chosen=chosen,
                    rejected=rejected,
                    chosen_text=row["chosen"],
                    rejected_text=row["rejected"],
                )
            )
    return pairs, dropped


def per_subset(pairs, n, rng):
    """n pairs, half from each subset (pairs shuffled first)."""
    out = []
    for subset in SUBSETS:
        of_subset = [p for p in pairs if p["subset"] == subset]
        rng.shuffle(of_subset)
        if len(of_subset) < n // 2:
            raise ValueError(f"only {len(of_subset)} {subset} pairs available, {n // 2} asked for: lower the counts")
        out += of_subset[: n // 2]
    rng.shuffle(out)
    return out


def accuracy(pairs, chosen_scores, rejected_scores):
    """evaluate-rm's pairwise accuracy (ties half, bootstrap 95 % interval), overall and per subset."""
    result = {"all": pairwise_accuracy(chosen_scores, rejected_scores)}
    for subset in SUBSETS:
        keep = [i for i, p in enumerate(pairs) if p["subset"] == subset]
        result[subset] = pairwise_accuracy([chosen_scores[i] for i in keep], [rejected_scores[i] for i in keep])
    return result


def train_moslim(train_pairs, eval_pairs, backbone, a, workdir):
    """Train with train_rm; returns (held-out pairwise accuracy or None when eval_pairs is empty, loop seconds)."""

    def rows(pairs):
        return [
            {
                "question": p["question"],
                "response": p[side],
                "labels": {s: level if s == p["subset"] else None for s in SUBSETS},
            }
            for p in pairs
            for side, level in (("chosen", 1), ("rejected", 0))
        ]

    out = os.path.join(workdir, "moslim")
    # Same budget in sequences: a pairwise micro-batch of m pairs forwards 2m sequences. The trainer's own held-out
    # pass (per-head metrics, calibration stats) gets 64 pairs, or a few training pairs when there is no eval set.
    config = TrainRMConfig(
        model_name_or_path=str(backbone),
        spec="hh",
        output_dir=out,
        max_steps=a.steps,
        micro_batch_size=2 * a.micro_batch_pairs,
        batch_size=2 * a.batch_pairs,
        lr=a.lr,
        max_len=a.max_len,
        seed=a.seed,
        lr_warmup_ratio=0.1,
        max_num=0,  # no resumable checkpoints: OpenRLHF's trainer saves none here either
    )
    eval_rows = rows(eval_pairs[:16] or train_pairs[:4])
    train_seconds = train_reward_model(config, rows(train_pairs), eval_rows)["train_seconds"]
    if not eval_pairs:
        return None, train_seconds
    # Scored through the product's own path (evaluate-rm's): Scorer.from_pretrained + score(), i.e. the reward the
    # mapping gives when the pair's objective is requested at its top level.
    from moslim_plugin.core.scorer import Scorer

    scorer = Scorer.from_pretrained(out, max_length=a.max_len, batch_size=8)
    scores = {}
    for side in ("chosen", "rejected"):
        scores[side] = []
        for i in tqdm(range(0, len(eval_pairs), 32), desc=f"moslim eval {side}"):
            batch = eval_pairs[i : i + 32]
            result = scorer.score(
                [p["question"] for p in batch], [p[side] for p in batch], [{p["subset"]: 1} for p in batch]
            )
            scores[side] += result.rewards.tolist()
    return accuracy(eval_pairs, scores["chosen"], scores["rejected"]), train_seconds


def summarize(results):
    """One summary line part and one headline entry per measured backbone."""
    summary, headline = [], []
    for name, r in results["backbones"].items():
        m, o = r["moslim"]["pairwise_accuracy"]["all"], r["openrlhf"]["pairwise_accuracy"]["all"]
        summary.append(
            f"{name}: MOSLIM {m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] vs OpenRLHF pairwise "
            f"{o['accuracy']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}] ({r['train_pairs']} train pairs, "
            f"{r['moslim']['train_seconds']:.0f} s vs {r['openrlhf']['train_seconds']:.0f} s)"
        )
        headline.append(
            {
                "metric": f"pairwise accuracy MOSLIM minus OpenRLHF, {name} at {results['max_len']} tokens "
                "(held-out HH-RLHF)",
                "value": m["accuracy"] - o["accuracy"],
                "target": ">= -0.02 (parity)",
                "met": m["accuracy"] - o["accuracy"] >= -0.02,
            }
        )
    return summary, headline


def kept_results(a, names, to_train, results) -> dict:
    """Results of the backbones not trained now, from the existing results file measured on the same pairs."""
    path = a.out
    old = json.loads(path.read_text()) if path.is_file() else {"config": {}, "results": {}}
    keys = ["data_dir", "backbones", "batch_pairs", "eval_pairs", "max_len", "eval_ratio", "seed"]
    differ = {k: (old["config"].get(k), vars(a)[k]) for k in keys if old["config"].get(k) != vars(a)[k]}
    for k in ("pairs_fitting_max_len", "eval_pairs", "pairs_fingerprint"):
        if old["results"].get(k) != results[k]:
            differ[k] = (old["results"].get(k), results[k])
    keep = {n: old["results"].get("backbones", {}).get(n) for n in names if n not in to_train}
    if differ or None in keep.values():
        raise SystemExit(f"--train {a.train}: {path} was not measured on the same pairs ({differ or keep}); run all")
    return keep


@contextlib.contextmanager
def fp32_openrlhf_models():
    """OpenRLHF's dtype lookup accepts bf16/fp16 only; fp32 for this run (looked up at call time, so patchable)."""
    import openrlhf.utils.utils as utils

    original = utils.convert_to_torch_dtype
    utils.convert_to_torch_dtype = lambda name: torch.float32 if name == "fp32" else original(name)
    try:
        yield
    finally:
        utils.convert_to_torch_dtype = original


def openrlhf_args(backbone, a, workdir):
    """train_rm's flags plus the attributes RewardModelTrainer and RewardDataset read from openrlhf/cli/train_rm.py."""
    args = TrainRMConfig.from_argv(
        [
            "--model.model_name_or_path",
            str(backbone),
            "--moslim.spec",
            "hh",
            "--data.dataset",
            "-",
            "--train.micro_batch_size",
            str(a.micro_batch_pairs),
            "--train.batch_size",
            str(a.batch_pairs),
            "--adam.lr",
            str(a.lr),
            "--lr_warmup_ratio",
            "0.1",
            "--train.seed",
            str(a.seed),
            "--ckpt.output_dir",
            os.path.join(workdir, "openrlhf"),
        ]
    ).strategy_args()
    args.model.aux_loss_coef, args.model.margin_loss_enable, args.model.compute_fp32_loss_enable = 0, False, False
    args.ds.packing_samples = False
    args.data.prompt_key, args.data.chosen_key, args.data.rejected_key = None, "chosen", "rejected"
    args.data.apply_chat_template = False
    return args


def read_eval_file(a) -> tuple[list, dict | None]:
    """--eval_file's pairs as the pairwise RM reads them (whole dialogues), checked with evaluate-rm's own rules
    (each pair's MOSLIM request included) before anything is trained; ([], None) without the flag."""
    from moslim_plugin.core.spec import load_spec

    if not a.eval_file:
        return [], None
    request = parse_request(a.eval_request)
    rows = read_records(a.eval_file)
    if not rows:
        raise SystemExit(f"--eval_file {a.eval_file}: the file holds no rows")
    read_pairs(rows, a.eval_file, request, load_spec("hh"))  # the MOSLIM RM's objectives: helpful, harmless
    texts = [
        {side: f"\n\nHuman: {r['question']}\n\nAssistant: {r[side]}" if "question" in r else r[side]
         for side in ("chosen", "rejected")}
        for r in rows
    ]  # fmt: skip
    return [{"chosen_text": t["chosen"], "rejected_text": t["rejected"]} for t in texts], request


def train_openrlhf(train_pairs, eval_pairs, backbone, a, workdir, file_pairs=()):
    """RewardModelTrainer.fit; returns (held-out pairwise accuracy or None when eval_pairs is empty, fit seconds,
    pairwise accuracy on `file_pairs` or None). With --keep_models the model is saved in workdir/openrlhf."""
    from datasets import Dataset
    from openrlhf.datasets import RewardDataset
    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.trainer.rm_trainer import RewardModelTrainer
    from openrlhf.utils import get_tokenizer

    args = openrlhf_args(backbone, a, workdir)
    strategy = TorchStrategy(args)
    strategy.setup_distributed()
    with fp32_openrlhf_models():
        model = get_llm_for_sequence_regression(
            str(backbone), "reward", param_dtype="fp32", attn_implementation="sdpa", init_value_head=True
        )
    tokenizer = get_tokenizer(str(backbone), model, "left", strategy)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token  # BERT has no eos; RewardDataset ends every sequence with one

    def dataset(pairs):
        data = Dataset.from_list([{"chosen": p["chosen_text"], "rejected": p["rejected_text"]} for p in pairs])
        return RewardDataset(data, tokenizer, a.max_len, strategy, num_processors=1)

    # Both datasets before prepare(): RewardDataset pickles the strategy for datasets' map workers, and a prepared
    # TorchStrategy holds an optimizer and scheduler that do not pickle.
    train_set, eval_set = dataset(train_pairs), eval_pairs and dataset(eval_pairs)
    file_set = file_pairs and dataset(file_pairs)
    loader = strategy.setup_dataloader(train_set, a.micro_batch_pairs, True, True, train_set.collate_fn)
    cfg = dict(
        optim="adam",
        muon={},
        adam=vars(args.adam),
        lr_scheduler=args.lr_scheduler,
        lr_warmup_ratio=0.1,
        min_lr_ratio=args.min_lr_ratio,
        max_norm=args.max_norm,
        scheduler_steps=a.steps,
    )
    model, optim, scheduler = strategy.prepare((model, cfg))
    trainer = RewardModelTrainer(
        model, strategy, optim, loader, None, scheduler, tokenizer, max_norm=args.max_norm, max_epochs=1
    )
    start = time.perf_counter()
    trainer.fit(args, 0, a.steps)
    seconds = time.perf_counter() - start
    if a.keep_models:
        strategy._unwrap_model(model).save_pretrained(os.path.join(workdir, "openrlhf"))
        tokenizer.save_pretrained(os.path.join(workdir, "openrlhf"))

    def scores(data, desc):
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False, collate_fn=data.collate_fn)
        chosen, rejected = [], []
        model.eval()
        with torch.no_grad():
            for chosen_ids, c_mask, reject_ids, r_mask, _ in tqdm(loader, desc=desc):
                ids = (chosen_ids.squeeze(1), c_mask.squeeze(1), reject_ids.squeeze(1), r_mask.squeeze(1))
                c, r, _ = trainer.concatenated_forward(model, *ids)
                chosen += c.tolist()
                rejected += r.tolist()
        return chosen, rejected

    held_out = accuracy(eval_pairs, *scores(eval_set, "openrlhf eval")) if eval_pairs else None
    on_file = pairwise_accuracy(*scores(file_set, "openrlhf eval_file")) if file_pairs else None
    return held_out, seconds, on_file


def draw(results, path):
    backbones = list(results["backbones"])
    with figure(path, 1, len(backbones), figsize=(5.5 * len(backbones), 3.6), squeeze=False) as (fig, axes):
        groups, width = ("all", *SUBSETS), 0.38
        for ax, backbone in zip(axes[0], backbones):
            for j, (name, label) in enumerate(
                (("moslim", "MOSLIM classification RM"), ("openrlhf", "OpenRLHF pairwise"))
            ):
                accs = [results["backbones"][backbone][name]["pairwise_accuracy"][g] for g in groups]
                values = [acc["accuracy"] for acc in accs]
                errors = [
                    [v - acc["ci95"][0] for v, acc in zip(values, accs)],
                    [acc["ci95"][1] - v for v, acc in zip(values, accs)],
                ]
                xs = [i + (j - 0.5) * width for i in range(len(groups))]
                bars = ax.bar(xs, values, width, yerr=errors, capsize=3, label=label)
                ax.bar_label(bars, fmt="%.2f", fontsize=7, label_type="center")
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(len(groups)), [f"{g} (n={results['eval_pairs'][g]})" for g in groups], fontsize=8)
            ax.set_ylabel("held-out pairwise accuracy (95 % CI)")
            ax.set_ylim(0.2, 1.0)
            b = results["backbones"][backbone]
            ax.set_title(f"{backbone}, {b['train_pairs']} train pairs, max_len {results['max_len']}", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--backbones", default="minilm,smollm2", help="comma list of minilm, smollm2")
    p.add_argument("--steps", default="16,6", help="optimizer steps per backbone (comma list, same order)")
    p.add_argument("--lr", default="1e-4,3e-5", help="learning rate per backbone (comma list, same order)")
    p.add_argument("--batch_pairs", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--micro_batch_pairs", type=int, default=4)
    p.add_argument("--eval_pairs", type=int, default=100, help="held-out pairs, half per subset")
    p.add_argument("--max_len", type=int, default=512)
    p.add_argument("--eval_ratio", type=float, default=0.3, help="share of prompts held out")
    p.add_argument("--seed", type=int, default=42)
    # A backbone's check is long on a CPU: --train runs only some of --backbones (all of them still filter the pairs,
    # so the data is the same) and keeps the others' results from the existing results file, if it was measured on
    # the same pairs (same data settings); otherwise it refuses, naming the settings that differ.
    p.add_argument("--train", default=None, help="comma list: train only these of --backbones (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "hh_rlhf_check.json", help="results JSON (PNG beside)")
    p.add_argument("--keep_models", type=Path, default=None, help="keep both trained RMs in DIR/<backbone>/")
    p.add_argument("--eval_file", default=None, help="also score this chosen/rejected file with both RMs")
    p.add_argument("--eval_request", default=None, help="--eval_file: the MOSLIM request, as evaluate-rm's")
    add_threads_flag(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    started = time.perf_counter()
    file_pairs, request = read_eval_file(a)
    compat.install()
    from transformers import AutoTokenizer

    from moslim_plugin.demo.real_models import minilm_path, smollm2_path

    names = a.backbones.split(",")
    paths = {"minilm": minilm_path, "smollm2": smollm2_path}
    backbones = {name: paths[name]() for name in names}
    steps = dict(zip(names, map(int, a.steps.split(","))))
    lrs = dict(zip(names, map(float, a.lr.split(","))))
    tokenizers = [AutoTokenizer.from_pretrained(path) for path in backbones.values()]
    pairs, dropped = load_pairs(a.data_dir, tokenizers, a.max_len)
    train_part, held_part, _ = split_by_group(pairs, a.eval_ratio, a.seed)
    assert not {p["question"] for p in train_part} & {p["question"] for p in held_part}
    rng = random.Random(a.seed)
    # One draw of training pairs; a backbone with fewer steps takes a prefix of it (same pairs, same order).
    all_train = per_subset(train_part, max(steps.values()) * a.batch_pairs, rng)
    eval_pairs = per_subset(held_part, a.eval_pairs, rng)

    results = {
        "max_len": a.max_len,
        "pairs_fitting_max_len": len(pairs),
        "pairs_dropped": dropped,
        "eval_pairs": {"all": len(eval_pairs), **{s: sum(p["subset"] == s for p in eval_pairs) for s in SUBSETS}},
        # Which pairs, in which order: counts alone would not tell another split of the same size apart.
        "pairs_fingerprint": hashlib.sha256(
            json.dumps([[p["question"], p["chosen"]] for p in all_train + eval_pairs]).encode()
        ).hexdigest()[:16],
        "backbones": {},
    }
    to_train = names if a.train is None else a.train.split(",")
    if set(to_train) - set(names):
        raise SystemExit(f"--train {a.train}: not in --backbones {a.backbones}")
    if to_train != names:
        results["backbones"] = kept_results(a, names, to_train, results)
    for name, backbone in backbones.items():
        if name not in to_train:
            continue
        b = argparse.Namespace(**{**vars(a), "steps": steps[name], "lr": lrs[name]})
        train_pairs = all_train[: b.steps * a.batch_pairs]
        kept = a.keep_models / name if a.keep_models else None
        if kept:
            kept.mkdir(parents=True, exist_ok=True)
        with contextlib.nullcontext(kept) if kept else tempfile.TemporaryDirectory(prefix="hh-check-") as workdir:
            moslim_acc, moslim_s = train_moslim(train_pairs, eval_pairs, backbone, b, workdir)
            if a.eval_file:  # evaluate-rm's own path, as a user would score the file
                moslim_file = evaluate(os.path.join(workdir, "moslim"), a.eval_file, None, request, a.max_len, 8)
                scored = results.setdefault("eval_files", {}).setdefault(a.eval_file, {"pairs": len(file_pairs)})
                scored[name] = {"moslim": moslim_file["pairs"]}
            openrlhf_acc, openrlhf_s, openrlhf_file = train_openrlhf(
                train_pairs, eval_pairs, backbone, b, workdir, file_pairs
            )
            if a.eval_file:
                scored[name]["openrlhf"] = openrlhf_file
        results["backbones"][name] = {
            "train_pairs": len(train_pairs),
            "steps": b.steps,
            "lr": b.lr,
            "moslim": {"pairwise_accuracy": moslim_acc, "train_seconds": moslim_s},
            "openrlhf": {"pairwise_accuracy": openrlhf_acc, "train_seconds": openrlhf_s},
        }
        # Written after every backbone: a long run that is stopped keeps what it measured.
        results["wall_seconds"] = time.perf_counter() - started
        a.out.parent.mkdir(parents=True, exist_ok=True)
        draw(results, a.out.with_suffix(".png"))
        summary, headline = summarize(results)
        line = f"held-out pairwise accuracy, {len(eval_pairs)} pairs, {a.max_len} tokens: " + "; ".join(summary)
        config = {**vars(a), "out": str(a.out), "keep_models": a.keep_models and str(a.keep_models)}
        write_result("hh_rlhf_check", config, results, line, headline, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
