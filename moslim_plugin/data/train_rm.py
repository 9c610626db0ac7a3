"""Train the multi-head classification reward model: per-head cross-entropy on (question, response, labels) rows.

Rows come from `moslim-openrlhf prepare-ratings` (`{"question", "response", "labels": {objective: level | null}}`);
a null label masks that head for that row. Flags mirror `openrlhf/cli/train_rm.py`. With CUDA the model is trained
through OpenRLHF's DeepspeedStrategy (ZeRO, bf16, LoRA, gradient checkpointing); without CUDA, or with --device
cpu / cuda, the same loop runs on `TorchStrategy`, the subset of the DeepspeedStrategy interface the loop uses, in
plain fp32 torch (AdamW) on that device, in this process (no launcher: what the one-machine demo needs). Rows are
split into training and held-out parts by question (no prompt in both).

Model selection: the held-out rows are evaluated every epoch (or every --eval.steps steps); the weights with the
lowest mean per-head negative log-likelihood (or, with --moslim.select macro_f1, the highest mean per-head macro-F1)
are kept, and training stops after --eval.patience evaluations without gain. The kept weights' held-out
probabilities give the per-head metrics (accuracy, macro-F1, mean absolute level error, expected calibration error,
NLL, confusion matrix) next to the majority-class and class-prior baselines (from the training labels), and the
calibration statistics the mapping needs, saved inside the checkpoint.

Resuming (--ckpt.load_enable) checks the objectives, head shapes, spec fingerprint and batch sizes saved with each
checkpoint and refuses a mismatch; an unreadable or incomplete newest checkpoint falls back to the previous one.

    moslim-openrlhf train-rm --model.model_name_or_path <backbone> --moslim.spec hh \
        --data.dataset ratings.jsonl --ckpt.output_dir ./rm --train.micro_batch_size 8 --train.batch_size 32
"""

import argparse
import json
import math
import os
import pickle
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import torch
from tqdm import tqdm
from transformers import SchedulerType

from moslim_plugin import UserError, positive_int
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.cpu_strategy import TorchStrategy
from moslim_plugin.data.rm_metrics import (
    IGNORE,
    balanced_class_weights,
    head_losses,
    head_metrics,
    predict,
    scalar_logs,
)
from moslim_plugin.data.rm_rows import collate, encode_rows, load_rows, load_tokenizer, split_by_question


def build_model(args, spec, tokenizer, ds_config=None):
    from moslim_plugin.core.rm import MultiHeadRewardModel

    path = args.model.model_name_or_path
    dschf = None
    if ds_config is not None and ds_config["zero_optimization"]["stage"] == 3:
        # ZeRO-3 as OpenRLHF's Actor does it: while an HfDeepSpeedConfig is alive, from_pretrained builds the model
        # under deepspeed.zero.Init, so no rank ever holds the full model. Kept in scope only for the build.
        from openrlhf.models.actor import _patch_zero3_weight_mapping
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        _patch_zero3_weight_mapping()
        dschf = HfDeepSpeedConfig(ds_config)  # noqa: F841 (held by reference: transformers keeps a weakref)
    # fp32 master weights on CPU; under DeepSpeed the engine casts to --ds.param_dtype itself.
    model = MultiHeadRewardModel.from_backbone(
        path,
        spec,
        pooling=args.moslim.pooling,
        number_words=args.moslim.number_words,
        dtype=torch.float32,
        attn_implementation=args.ds.attn_implementation,
    )
    # load_tokenizer's line-break token, when its id is past the embedding (a padded vocabulary may already hold it).
    # Only that token: any other tokenizer/model size mismatch stays the error it is.
    if tokenizer.get_added_vocab().get("\n", -1) >= model.backbone.get_input_embeddings().num_embeddings:
        model.backbone.resize_token_embeddings(len(tokenizer))
    if args.ds.lora.rank > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=args.ds.lora.rank,
            lora_alpha=args.ds.lora.alpha,
            lora_dropout=args.ds.lora.dropout,
            target_modules=args.ds.lora.target_modules,
            bias="none",
        )
        model.backbone = get_peft_model(model.backbone, lora)
    if args.model.gradient_checkpointing_enable:
        model.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": args.model.gradient_checkpointing_reentrant}
        )
    return model


def open_logger(args):
    """wandb when --logger.wandb.key is set, else TensorBoard when --logger.tensorboard_dir is (OpenRLHF's rule)."""
    if args.logger.wandb.key:
        import wandb

        wandb.login(key=args.logger.wandb.key)
        run = wandb.init(
            project=args.logger.wandb.project, name=args.logger.wandb.run_name, config=vars(args), reinit=True
        )
        return lambda logs, step: run.log({**logs, "global_step": step}), run.finish
    if args.logger.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=os.path.join(args.logger.tensorboard_dir, args.logger.wandb.run_name))

        def log(logs, step):
            for key, value in logs.items():
                writer.add_scalar(key, value, step)

        return log, writer.close
    return lambda logs, step: None, lambda: None


# --moslim.select: what the kept weights are best at. NLL by default: the mapping reads probabilities, so calibration
# counts. macro-F1 when the heads' levels are what is judged: NLL can turn upward an epoch or two before the rarer
# classes are learnt (the demo's RM kept epoch 1-2 of 8 by NLL in three of five probes, at lower F1).
SELECTIONS = {
    "nll": "mean per-head negative log-likelihood on the held-out rows (lower is better)",
    "macro_f1": "mean per-head macro-F1 on the held-out rows (higher is better)",
}
META_FILE = "moslim_resume.json"


def split_rows(args, spec, rows, eval_rows):
    """(training rows, held-out rows): the held-out file when given, else a split by question of the dataset."""
    source = args.data.dataset or "<rows>"
    # All input is checked before a model is built: a bad row fails in seconds, not after an hour of training.
    rows = load_rows(rows if rows is not None else args.data.dataset, spec, source)[: args.data.max_samples]
    if eval_rows is not None or args.eval.dataset:
        eval_source = args.eval.dataset or "<eval rows>"
        train_rows = rows
        eval_rows = load_rows(eval_rows if eval_rows is not None else args.eval.dataset, spec, eval_source)
    else:
        train_rows, eval_rows = split_by_question(rows, args.moslim.eval_ratio, args.train.seed)
    if not eval_rows or len(train_rows) < args.train.batch_size:
        raise UserError(
            f"{source}: {len(train_rows)} training / {len(eval_rows)} held-out rows after the split by question "
            f"(--moslim.eval_ratio {args.moslim.eval_ratio}); need >= --train.batch_size ({args.train.batch_size}) "
            "training rows and >= 1 held-out row"
        )
    return train_rows, eval_rows


def run_settings(args, spec) -> dict:
    """What a checkpoint must share with the run that resumes it: the heads' meaning and shapes, the batching."""
    from moslim_plugin.core.rm import NUMBERED_WORDS

    return {
        "objectives": list(spec.names),
        "head_levels": list(spec.levels),
        "spec_fingerprint": spec.fingerprint,
        "train.batch_size": args.train.batch_size,
        "train.micro_batch_size": args.train.micro_batch_size,
        "moslim.select": args.moslim.select,  # the saved best value is in its units
        # The weights read the words one way or the other (`true`: the earlier numbering, refused as rm.py does).
        "moslim.number_words": args.moslim.number_words and NUMBERED_WORDS,
    }


def save_checkpoint(args, spec, strategy, model, state):
    tag = f"global_step{state['global_step']}"
    strategy.save_ckpt(model, args.ckpt.path, tag, args.ckpt.max_num, args.ckpt.max_mem, state)
    if strategy.is_rank_0():
        # Written after the weights: a tag folder without this file is an incomplete checkpoint.
        with open(os.path.join(args.ckpt.path, tag, META_FILE), "w") as f:
            json.dump(run_settings(args, spec), f)


def resume(args, spec, strategy, model) -> dict | None:
    """Loop state of the newest readable checkpoint in --ckpt.path, or None. Settings must match (else refused);
    an unreadable or incomplete checkpoint falls back to the previous one, with a warning naming it."""
    root = args.ckpt.path
    if not args.ckpt.load_enable or not os.path.isdir(root):
        return None
    tags = [d for d in os.listdir(root) if d.startswith("global_step") and d[11:].isdigit()]
    expected, bad = run_settings(args, spec), []
    for tag in sorted(tags, key=lambda d: int(d[11:]), reverse=True):
        current = meta = os.path.join(root, tag, META_FILE)
        try:
            with open(meta) as f:
                saved = json.load(f)
            saved.setdefault("moslim.number_words", False)  # written before the flag existed: plain words
            for key, value in expected.items():
                if saved.get(key) != value:
                    raise UserError(
                        f"{meta}: the checkpoint was written with {key}={saved.get(key)!r}, this run has {value!r}; "
                        "resume with the same setting, or train into a new --ckpt.path"
                    )
            current = os.path.join(root, tag, "state.pt") if isinstance(strategy, TorchStrategy) else current
            path, state = strategy.load_ckpt(model, root, tag=tag)
        except UserError:
            raise
        except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
            bad.append(current)
            strategy.print(f"Warning: checkpoint file {current} is unreadable or incomplete ({str(e)[:200]})")
            continue
        if bad:
            strategy.print(f"Warning: resumed from the older checkpoint {path}; skipped the bad {bad}")
        strategy.print(f"Loaded the checkpoint: {path}, consumed_samples: {state['consumed_samples']}")
        return state
    if bad:
        raise UserError(f"{root}: no readable checkpoint to resume from; bad: {bad}")
    strategy.print(f"Warning: no checkpoint found at {root}, starting from scratch.")
    return None


def check_output_dir(args):
    out = args.ckpt.output_dir
    if os.path.exists(out) and not os.path.isdir(out):  # found now, not when saving after the training
        raise UserError(f"--ckpt.output_dir {out}: a file, not a folder")
    if os.path.isfile(os.path.join(out, "config.json")) and not args.ckpt.overwrite:
        raise UserError(
            f"--ckpt.output_dir {out} already holds a model (config.json): choose another folder or pass "
            "--ckpt.overwrite to replace it"
        )


@dataclass
class Run:
    """What the training loop works with, built once by `train`."""

    args: argparse.Namespace
    spec: object
    strategy: object
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    train_loader: object
    eval_loader: object
    device: torch.device
    class_weights: list | None
    steps_per_epoch: int
    max_steps: int
    log: object
    eval_seconds: float = 0.0  # held-out evaluations inside the loop, left out of the reported training time


def evaluate_and_select(run: Run, state: dict) -> None:
    """Held-out metrics now; the weights are kept when they beat the best so far (see SELECTIONS). The history
    holds the criterion as a loss, lower is better: NLL, or 1 - macro-F1."""
    start = time.perf_counter()
    metrics = head_metrics(*predict(run.model, run.eval_loader, run.device), run.spec)
    key = run.args.moslim.select
    value = sum(m[key] for m in metrics.values() if m["n"]) / sum(bool(m["n"]) for m in metrics.values())
    value = value if key == "nll" else 1.0 - value
    # Under DeepSpeed each rank sees its shard of the held-out rows: all ranks must keep and stop alike.
    value = float(run.strategy.all_reduce(value))
    state["history"].append([state["global_step"], value])
    run.log({**scalar_logs(metrics), f"eval/selection_{key}": value}, state["global_step"])
    if value < state["best_value"]:
        weights = run.strategy._unwrap_model(run.model).state_dict()
        state.update(best_value=value, best_step=state["global_step"], evals_without_gain=0)
        state["best_weights"] = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
    else:
        state["evals_without_gain"] += 1
    run.eval_seconds += time.perf_counter() - start


def train_loop(run: Run, state: dict) -> None:
    """Optimizer steps until max_steps or early stopping; evaluates, keeps the best weights and checkpoints."""
    args, strategy = run.args, run.strategy
    bar = tqdm(total=run.max_steps, initial=state["global_step"], desc="train-rm", disable=not strategy.is_rank_0())
    epoch = state["global_step"] // run.steps_per_epoch
    micro_step = 0
    while state["global_step"] < run.max_steps and not stop_early(args, state):
        skip = state["consumed_samples"] - epoch * run.steps_per_epoch * args.train.batch_size
        run.train_loader.sampler.set_epoch(epoch, consumed_samples=max(skip, 0))
        for inputs, labels in run.train_loader:
            logits = run.model(**{k: v.to(run.device) for k, v in inputs.items()})
            losses = head_losses(
                logits, labels.to(run.device), run.spec, run.class_weights, args.moslim.label_smoothing
            )
            present = [loss for loss in losses if loss is not None]
            # A micro-batch without any label still goes through backward: DeepSpeed counts micro-steps.
            loss = torch.stack(present).mean() if present else logits.sum() * 0.0
            strategy.backward(loss, run.model, run.optimizer)
            strategy.optimizer_step(run.optimizer, run.model, run.scheduler)
            micro_step += 1
            if micro_step % strategy.accumulated_gradient:
                continue
            state["global_step"] += 1
            step = state["global_step"]
            state["consumed_samples"] = step * args.train.batch_size
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update()
            if step % args.logger.logging_steps == 0:
                logs = {"train/loss": loss.item(), "train/lr": run.scheduler.get_last_lr()[0]}
                logs["train/grad_norm"] = strategy.get_grad_norm(run.model)
                logs.update({f"train/{n}_loss": x.item() for n, x in zip(run.spec.names, losses) if x is not None})
                run.log(strategy.all_reduce(logs), step)
            end_of_epoch = step % run.steps_per_epoch == 0
            if (step % args.eval.steps == 0) if args.eval.steps > 0 else end_of_epoch:
                evaluate_and_select(run, state)
            if args.ckpt.save_steps > 0 and step % args.ckpt.save_steps == 0:
                save_checkpoint(args, run.spec, strategy, run.model, state)
            # An epoch is steps_per_epoch optimizer steps (as in OpenRLHF): no partial accumulation carries over.
            if step >= run.max_steps or end_of_epoch or stop_early(args, state):
                break
        epoch += 1
    bar.close()
    if not state["history"] or state["history"][-1][0] != state["global_step"]:
        evaluate_and_select(run, state)  # the last weights are a candidate too


def stop_early(args, state) -> bool:
    return args.eval.patience > 0 and state["evals_without_gain"] >= args.eval.patience


def train(args, rows=None, eval_rows=None) -> dict:
    """Train, keep the best weights on held-out rows, save them with their calibration statistics; returns metrics."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch build sees no CUDA device; use --device cpu (or auto)")
    spec = load_spec(args.moslim.spec)
    train_rows, eval_rows = split_rows(args, spec, rows, eval_rows)
    check_output_dir(args)
    tokenizer = load_tokenizer(args.model.model_name_or_path)
    limit, words = args.data.max_len, args.moslim.number_words
    train_set = encode_rows(train_rows, tokenizer, spec, limit, args.data.dataset or "<rows>", words)
    eval_set = encode_rows(eval_rows, tokenizer, spec, limit, args.eval.dataset or "<held-out rows>", words)

    use_deepspeed = args.device == "auto" and torch.cuda.is_available()
    if use_deepspeed:
        from openrlhf.utils import get_strategy

        strategy = get_strategy(args)
    else:
        strategy = TorchStrategy(args)
    strategy.setup_distributed()
    if use_deepspeed:
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu" if args.device == "auto" else args.device)
    model = build_model(args, spec, tokenizer, strategy.get_ds_train_config() if use_deepspeed else None)
    if not use_deepspeed:
        model.to(device)  # the DeepSpeed engine places the model itself

    collate_fn = partial(collate, tokenizer=tokenizer)
    train_loader = strategy.setup_dataloader(train_set, args.train.micro_batch_size, True, True, collate_fn)
    eval_loader = strategy.setup_dataloader(eval_set, args.train.micro_batch_size, True, False, collate_fn, False)
    steps_per_epoch = len(train_rows) // args.train.batch_size
    max_steps = (
        args.train.max_steps if args.train.max_steps > 0 else math.ceil(args.train.max_epochs * steps_per_epoch)
    )
    if max_steps < 20:
        strategy.print(
            f"Warning: {max_steps} optimizer steps in all ({len(train_rows)} training rows // --train.batch_size "
            f"{args.train.batch_size} = {steps_per_epoch} per epoch): lower --train.batch_size or raise "
            "--train.max_epochs for more"
        )
    cfg = dict(optim="adam", muon={}, adam=vars(args.adam), lr_scheduler=args.lr_scheduler)
    cfg.update(lr_warmup_ratio=args.lr_warmup_ratio, min_lr_ratio=args.min_lr_ratio, max_norm=args.max_norm)
    model, optimizer, scheduler = strategy.prepare((model, {**cfg, "scheduler_steps": max_steps}))
    class_weights = balanced_class_weights(train_rows, spec) if args.moslim.class_weights == "balanced" else None
    state = resume(args, spec, strategy, model) or dict(
        consumed_samples=0, global_step=0, history=[], best_value=float("inf"), best_step=-1, evals_without_gain=0
    )
    state["global_step"] = state["consumed_samples"] // args.train.batch_size
    log, close_logger = open_logger(args) if strategy.is_rank_0() else (lambda *a: None, lambda: None)
    run = Run(
        args, spec, strategy, model, optimizer, scheduler, train_loader, eval_loader, device, class_weights,
        steps_per_epoch, max_steps, log,
    )  # fmt: skip
    start = time.perf_counter()
    train_loop(run, state)
    train_seconds = time.perf_counter() - start - run.eval_seconds  # the loop alone: no load, evaluation or save
    close_logger()
    return finish(run, state, tokenizer, train_rows, eval_rows, train_seconds)


def finish(run: Run, state: dict, tokenizer, train_rows, eval_rows, train_seconds) -> dict:
    """Load the best weights, measure them against the baselines, save them with their statistics."""
    from moslim_plugin.core.mappings import MappingStats

    args, spec, strategy = run.args, run.spec, run.strategy
    criterion = SELECTIONS[args.moslim.select]
    unwrapped = strategy._unwrap_model(run.model)
    unwrapped.load_state_dict(state["best_weights"])
    probs, labels = predict(run.model, run.eval_loader, run.device)
    train_labels = torch.tensor(
        [[IGNORE if r["labels"].get(n) is None else r["labels"][n] for n in spec.names] for r in train_rows]
    )
    metrics = head_metrics(probs, labels, spec, prior_labels=train_labels)
    unwrapped.stats = MappingStats.from_probs(probs, spec.levels)
    save_model(unwrapped, tokenizer, args, strategy)
    result = {
        "output_dir": args.ckpt.output_dir,
        "global_step": state["global_step"],
        "selection": {"criterion": criterion, "best_step": state["best_step"], "history": state["history"]},
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "train_seconds": train_seconds,
        "metrics": metrics,
    }
    if strategy.is_rank_0():
        with open(os.path.join(args.ckpt.output_dir, "eval_metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
        strategy.print(f"[eval] kept step {state['best_step']} of {state['global_step']} ({criterion})")
        for name, m in metrics.items():
            strategy.print(f"[eval] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items() if k != "confusion"))
            if m["n"] and (m["accuracy"] < m["majority_accuracy"] or m["nll"] > m["prior_nll"]):
                strategy.print(
                    f"Warning: head {name} does not beat the baselines: accuracy {m['accuracy']:.3f} vs majority "
                    f"class {m['majority_accuracy']:.3f}, NLL {m['nll']:.3f} vs class prior {m['prior_nll']:.3f}"
                )
    return result


def save_model(model, tokenizer, args, strategy):
    """HF folder via MultiHeadRewardModel.save_pretrained; LoRA merged in, ZeRO-3 shards gathered first."""
    if args.ds.lora.rank > 0:
        model.backbone = model.backbone.merge_and_unload()
    if args.ds.zero_stage == 3 and not isinstance(strategy, TorchStrategy):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if strategy.is_rank_0():
                model.save_pretrained(args.ckpt.output_dir, tokenizer=tokenizer)
    elif strategy.is_rank_0():
        model.save_pretrained(args.ckpt.output_dir, tokenizer=tokenizer)


def build_parser():
    p = argparse.ArgumentParser(prog="moslim-openrlhf train-rm", description=__doc__.split("\n\n")[0])
    # Same names and defaults as openrlhf/cli/train_rm.py where the flag exists there.
    p.add_argument("--model.model_name_or_path", type=str, required=True)
    p.add_argument("--model.gradient_checkpointing_enable", action="store_true", default=False)
    p.add_argument("--model.gradient_checkpointing_reentrant", action="store_true", default=False)
    p.add_argument("--data.dataset", type=str, default=None, help="rows from prepare-ratings (.jsonl)")
    p.add_argument("--data.max_samples", type=int, default=1000000)
    p.add_argument("--data.max_len", type=positive_int, default=512)
    p.add_argument("--eval.dataset", type=str, default=None, help="held-out rows (default: split by question)")
    p.add_argument("--eval.steps", type=int, default=-1, help="evaluate every N steps (default: every epoch)")
    p.add_argument("--eval.patience", type=int, default=3, help="stop after N evaluations without gain (0: never)")
    p.add_argument("--train.micro_batch_size", type=positive_int, default=1)
    p.add_argument("--train.batch_size", type=positive_int, default=128)
    p.add_argument("--train.max_epochs", type=int, default=1)
    p.add_argument("--train.max_steps", type=int, default=-1, help="optimizer steps; overrides max_epochs when > 0")
    p.add_argument("--train.seed", type=int, default=42)
    p.add_argument("--train.full_determinism_enable", action="store_true", default=False)
    p.add_argument("--adam.lr", type=float, default=9e-6)
    p.add_argument("--adam.betas", type=float, nargs=2, default=(0.9, 0.95))
    p.add_argument("--adam.eps", type=float, default=1e-8)
    p.add_argument("--adam.weight_decay", type=float, default=0.0)
    schedulers = [s.value for s in SchedulerType]  # a typo would otherwise fail only after the model is built
    p.add_argument("--lr_scheduler", type=str, default="cosine_with_min_lr", choices=schedulers)
    p.add_argument("--lr_warmup_ratio", type=float, default=0.03)
    p.add_argument("--min_lr_ratio", type=float, default=0.1)
    p.add_argument("--max_norm", type=float, default=1.0)
    p.add_argument("--ckpt.output_dir", type=str, default="./ckpt")
    p.add_argument("--ckpt.path", type=str, default="./ckpt/checkpoints_rm")
    p.add_argument("--ckpt.save_steps", type=int, default=-1)
    p.add_argument("--ckpt.max_num", type=int, default=3)
    p.add_argument("--ckpt.max_mem", type=int, default=int(1e8))
    p.add_argument("--ckpt.load_enable", action="store_true", default=False)
    p.add_argument("--ckpt.overwrite", action="store_true", default=False, help="replace a model in output_dir")
    p.add_argument("--local_rank", type=int, default=-1)
    # Ours. auto is OpenRLHF's behaviour; cpu / cuda run in this process without a launcher (e.g. inside the demo).
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"],
        help="auto: DeepSpeed on CUDA if there is a GPU, else plain torch on CPU; cpu / cuda: plain fp32 torch there",
    )  # fmt: skip
    p.add_argument("--ds.zero_stage", type=int, default=2)
    p.add_argument("--ds.param_dtype", type=str, default="bf16", choices=["bf16", "fp16"], help="GPU only; CPU: fp32")
    p.add_argument("--ds.attn_implementation", type=str, default="sdpa")
    p.add_argument("--ds.adam_offload", action="store_true", default=False)
    p.add_argument("--ds.zpg", type=int, default=1)
    p.add_argument("--ds.grad_accum_dtype", type=str, default=None)
    p.add_argument("--ds.overlap_comm", action="store_true", default=False)
    p.add_argument("--ds.lora.rank", type=int, default=0)
    p.add_argument("--ds.lora.alpha", type=int, default=16)
    p.add_argument("--ds.lora.dropout", type=float, default=0)
    p.add_argument("--ds.lora.target_modules", type=str, nargs="*", default="all-linear")
    p.add_argument("--logger.logging_steps", type=int, default=1)
    p.add_argument("--logger.tensorboard_dir", type=str, default=None)
    p.add_argument("--logger.wandb.key", type=str, default=None)
    p.add_argument("--logger.wandb.project", type=str, default="moslim_train_rm")
    p.add_argument("--logger.wandb.run_name", type=str, default=datetime.now().strftime("rm_%m%dT%H:%M"))
    # Ours.
    p.add_argument("--moslim.spec", type=str, required=True, help="objective spec (YAML/JSON or a bundled name)")
    p.add_argument("--moslim.pooling", type=str, default="auto", choices=["auto", "last", "cls", "mean"])
    p.add_argument(
        "--moslim.number_words",
        action="store_true",
        help="the RM reads each response word after its index (1 Sure, 2 here): lets a head count words; saved in "
        "the checkpoint, so every scorer of it reads the same",
    )
    p.add_argument("--moslim.eval_ratio", type=float, default=0.1, help="held-out share of questions")
    p.add_argument("--moslim.label_smoothing", type=float, default=0.0)
    p.add_argument("--moslim.class_weights", type=str, default="none", choices=["none", "balanced"])
    p.add_argument("--moslim.select", type=str, default="nll", choices=list(SELECTIONS), help="model selection")
    return p


def parse_args(argv):
    from openrlhf.utils.config import hierarchize

    args = hierarchize(build_parser().parse_args(argv))
    if args.data.dataset is None:
        raise UserError("--data.dataset is required (rows written by `moslim-openrlhf prepare-ratings`)")
    batch, micro = args.train.batch_size, args.train.micro_batch_size
    if micro < 1 or batch % micro:
        raise UserError(
            f"--train.batch_size {batch} is not a multiple of --train.micro_batch_size {micro}: each optimizer step "
            "accumulates whole micro-batches (e.g. 8 and 4, or 8 and 8)"
        )
    return args


def train_reward_model(data, spec, pretrain, output_dir, *, eval_data=None, **flags) -> dict:
    """Python API: `data`/`eval_data` are prepare-ratings rows (a list) or a path; `flags` are train-rm flags by
    their last name, e.g. `train_reward_model(rows, "hh", path, out, max_steps=20, micro_batch_size=8, lr=1e-4)`."""
    actions = {}
    for action in build_parser()._actions:
        if action.dest != "help":
            actions[action.dest] = action
            # A last name shared by two flags (data.dataset / eval.dataset) must be given in full.
            last = action.dest.rsplit(".", 1)[-1]
            actions[last] = None if last in actions and last != action.dest else action
    argv = ["--model.model_name_or_path", str(pretrain), "--moslim.spec", "<api>"]
    argv += ["--ckpt.output_dir", str(output_dir)]
    argv += ["--data.dataset", data if isinstance(data, (str, os.PathLike)) else "<rows>"]
    for name, value in flags.items():
        if actions.get(name) is None:
            known = sorted(k for k, v in actions.items() if v is not None)
            raise TypeError(f"train_reward_model: unknown or ambiguous flag {name!r}; known: {known}")
        option = actions[name].option_strings[0]
        if isinstance(value, bool):
            argv += [option] if value else []
        elif isinstance(value, (list, tuple)):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
    args = parse_args(argv)
    args.moslim.spec = load_spec(spec)
    rows = None if isinstance(data, (str, os.PathLike)) else data
    if isinstance(eval_data, (str, os.PathLike)):
        args.eval.dataset, eval_data = str(eval_data), None
    return train(args, rows=rows, eval_rows=eval_data)


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0
