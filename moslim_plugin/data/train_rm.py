"""Train the multi-head classification reward model: per-head cross-entropy on (question, response, labels) rows.

Rows come from `moslim-openrlhf prepare-ratings` (`{"question", "response", "labels": {objective: level | null}}`);
a null label masks that head for that row. Flags mirror `openrlhf/cli/train_rm.py`. With CUDA the model is trained
through OpenRLHF's DeepspeedStrategy (ZeRO, bf16, LoRA, gradient checkpointing); without CUDA the same loop runs on
`TorchStrategy`, the subset of the DeepspeedStrategy interface the loop uses, in plain fp32 torch (AdamW). Rows are
split into training and held-out parts by question (no prompt in both); after training the held-out probabilities
give the per-head metrics (accuracy, macro-F1, mean absolute level error, expected calibration error) and the
calibration statistics the mapping needs, which are saved inside the checkpoint.

    moslim-openrlhf train-rm --model.model_name_or_path <backbone> --moslim.spec hh \
        --data.dataset ratings.jsonl --ckpt.output_dir ./rm --train.micro_batch_size 8 --train.batch_size 32
"""

import argparse
import hashlib
import json
import math
import os
import random
import time
from datetime import datetime
from functools import partial

import torch
import torch.nn.functional as F
from tqdm import tqdm

from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.ratings import read_records

IGNORE = -100  # label of a head without a rating in this row


def load_rows(data, spec, source: str) -> list[dict]:
    """Rating rows from a path or a list, checked against the spec before any model is built."""
    rows = read_records(data) if isinstance(data, (str, os.PathLike)) else list(data)
    if not rows:
        raise ValueError(f"{source}: the dataset is empty")
    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        for key in ("question", "response"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{where}: expected a {key!r} string, got {row.get(key)!r:.80}")
        labels = row.get("labels")
        if not isinstance(labels, dict):
            raise ValueError(f"{where}: expected 'labels' {{objective: level or null}}, got {labels!r:.80}")
        for name, level in labels.items():
            if name not in spec.names:
                raise ValueError(f"{where}: unknown objective {name!r} in labels; the spec has {list(spec.names)}")
            levels = spec.levels[spec.index(name)]
            if level is not None and (
                not isinstance(level, int) or isinstance(level, bool) or not 0 <= level < levels
            ):
                raise ValueError(
                    f"{where}: label {name}={level!r} is not a level of {name!r} (0..{levels - 1} or null)"
                )
    counts = {name: sum(row["labels"].get(name) is not None for row in rows) for name in spec.names}
    if not any(counts.values()):
        raise ValueError(f"{source}: no row has a label for any objective of {list(spec.names)}")
    return rows


def split_by_question(rows, eval_ratio: float, seed: int):
    """Held-out = rows whose question hashes below `eval_ratio`: a prompt never lands in both parts."""

    def bucket(question):
        digest = hashlib.sha256(f"{seed}/{question}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    held = [bucket(row["question"]) < eval_ratio for row in rows]
    return [r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h]


def encode_rows(rows, tokenizer, spec, max_len, source):
    """Each row encoded once, exactly as the Scorer reads a pair at reward time (`scorer.encode`: chat template or
    pair encoding, the question truncated from its start), with its labels (IGNORE for a missing rating)."""
    from moslim_plugin.core.scorer import encode

    out = []
    for row in tqdm(rows, desc=f"encode {os.path.basename(source)}", leave=False):
        try:
            encoded = encode(tokenizer, row["question"], row["response"], max_len)
        except ValueError as e:
            raise ValueError(f"{source}: row with question {row['question'][:60]!r}: {e}") from None
        out.append((encoded, [IGNORE if row["labels"].get(n) is None else row["labels"][n] for n in spec.names]))
    return out


def collate(batch, tokenizer):
    inputs = tokenizer.pad([encoded for encoded, _ in batch], return_tensors="pt")
    return dict(inputs), torch.tensor([labels for _, labels in batch], dtype=torch.long)


def head_losses(logits, labels, spec, class_weights=None, label_smoothing=0.0):
    """Cross-entropy per head over its own levels, rows without a label masked; None for a head with no label."""
    losses = []
    for k, levels in enumerate(spec.levels):
        mask = labels[:, k] != IGNORE
        if not mask.any():
            losses.append(None)
            continue
        weight = None if class_weights is None else class_weights[k].to(logits.device)
        losses.append(
            F.cross_entropy(logits[mask, k, :levels], labels[mask, k], weight=weight, label_smoothing=label_smoothing)
        )
    return losses


def balanced_class_weights(rows, spec) -> list[torch.Tensor]:
    """n / (levels * count) per class (sklearn's 'balanced'); a class never seen keeps weight 1."""
    weights = []
    for name, levels in zip(spec.names, spec.levels):
        counts = torch.zeros(levels)
        for row in rows:
            if row["labels"].get(name) is not None:
                counts[row["labels"][name]] += 1
        w = counts.sum() / (levels * counts.clamp(min=1))
        weights.append(torch.where(counts > 0, w, torch.ones_like(w)))
    return weights


def head_metrics(probs, labels, spec, bins: int = 10) -> dict:
    """Per head on labelled rows: accuracy, macro-F1 (classes present in labels or predictions), mean absolute
    level error of the argmax, expected calibration error of the argmax confidence (equal-width bins)."""
    metrics = {}
    for k, (name, levels) in enumerate(zip(spec.names, spec.levels)):
        mask = labels[:, k] != IGNORE
        y, p = labels[mask, k], probs[mask, k, :levels]
        if y.numel() == 0:
            metrics[name] = {"n": 0}
            continue
        conf, pred = p.max(dim=-1)
        correct = (pred == y).float()
        f1s = []
        for c in range(levels):
            tp, fp, fn = ((pred == c) & (y == c)).sum(), ((pred == c) & (y != c)).sum(), ((pred != c) & (y == c)).sum()
            if tp + fp + fn > 0:
                f1s.append((2 * tp / (2 * tp + fp + fn)).item())
        edges = torch.linspace(0, 1, bins + 1)
        which = torch.bucketize(conf, edges[1:-1], right=True)
        ece = sum(
            (which == b).float().mean() * (conf[which == b].mean() - correct[which == b].mean()).abs()
            for b in range(bins)
            if (which == b).any()
        )
        metrics[name] = {
            "n": int(y.numel()),
            "accuracy": correct.mean().item(),
            "macro_f1": sum(f1s) / len(f1s),
            "mae": (pred - y).abs().float().mean().item(),
            "ece": float(ece),
        }
    return metrics


@torch.no_grad()
def predict(model, loader, device):
    """Softmax probabilities [N, K, Lmax] and labels [N, K] over a loader, in order."""
    model.eval()
    probs, labels = [], []
    for inputs, batch_labels in loader:
        logits = model(**{k: v.to(device) for k, v in inputs.items()})
        probs.append(logits.float().softmax(-1).cpu())
        labels.append(batch_labels)
    model.train()
    return torch.cat(probs), torch.cat(labels)


class TorchStrategy:
    """The part of OpenRLHF's DeepspeedStrategy the RM loops use, in plain torch, for machines without CUDA.

    Same calls (prepare, backward, optimizer_step, save_ckpt/load_ckpt, setup_dataloader, all_reduce, print) and the
    same gradient accumulation (batch_size // micro_batch_size micro-steps per optimizer step) and scheduler as the
    DeepSpeed engine, so one training loop serves both. Its checkpoints also hold the RNG states: a resumed run
    draws the same dropout masks as an uninterrupted one.
    """

    def __init__(self, args):
        self.args = args
        self.seed = args.train.seed
        self.max_norm = args.max_norm
        self.accumulated_gradient = max(1, args.train.batch_size // args.train.micro_batch_size)
        self.ring_attn_group = None
        self.world_size = 1
        self.micro_steps = 0
        self.grad_norm = 0.0

    def setup_distributed(self):
        import transformers

        transformers.set_seed(self.seed)

    def prepare(self, model_and_cfg):
        from transformers.trainer import get_scheduler

        model, cfg = model_and_cfg
        adam = cfg["adam"]
        decay = [p for n, p in model.named_parameters() if p.requires_grad and not _no_decay(n)]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and _no_decay(n)]
        groups = [{"params": decay, "weight_decay": adam["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=adam["lr"], betas=tuple(adam["betas"]), eps=adam["eps"])
        steps = cfg["scheduler_steps"]
        kwargs = {"min_lr_rate": cfg["min_lr_ratio"]} if "min_lr" in cfg["lr_scheduler"] else {}
        self.scheduler = get_scheduler(
            cfg["lr_scheduler"],
            self.optimizer,
            num_warmup_steps=math.ceil(steps * cfg["lr_warmup_ratio"]),
            num_training_steps=steps,
            scheduler_specific_kwargs=kwargs,
        )
        self.max_norm = cfg["max_norm"]
        self.model = model
        return model, self.optimizer, self.scheduler

    def backward(self, loss, model, optimizer):
        (loss / self.accumulated_gradient).backward()

    def optimizer_step(self, optimizer, model, scheduler):
        self.micro_steps += 1
        if self.micro_steps % self.accumulated_gradient:
            return
        params = [p for p in model.parameters() if p.grad is not None]
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm or float("inf")))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    def get_grad_norm(self, model):
        return self.grad_norm

    def setup_dataloader(
        self,
        dataset,
        batch_size,
        pin_memory=False,
        shuffle=True,
        collate_fn=None,
        drop_last=True,
        sampler=None,
        consumed_samples=0,
        num_workers=0,
    ):
        from openrlhf.utils.distributed_sampler import DistributedSampler

        sampler = sampler or DistributedSampler(
            dataset,
            num_replicas=1,
            rank=0,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=drop_last,
            consumed_samples=consumed_samples,
        )
        # Its own generator: creating an iterator must not draw from the global RNG (the dropout masks).
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_fn,
            num_workers=num_workers,
            generator=torch.Generator(),
        )

    def _unwrap_model(self, model):
        return model

    def all_reduce(self, data, op="mean"):
        return data

    def all_gather(self, data):
        return data if isinstance(data, torch.Tensor) else torch.tensor([data])

    def print(self, *msg):
        print(*msg)

    def is_rank_0(self):
        return True

    def save_ckpt(self, model, save_dir, tag=None, max_num=3, max_mem=1000, client_state=None, **kwargs):
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        state = {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "micro_steps": self.micro_steps,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "client_state": client_state or {},
        }
        torch.save(state, os.path.join(save_dir, tag, "state.pt"))
        with open(os.path.join(save_dir, "latest"), "w") as f:
            f.write(tag)
        tags = sorted(
            (d for d in os.listdir(save_dir) if os.path.isfile(os.path.join(save_dir, d, "state.pt"))),
            key=lambda d: os.path.getmtime(os.path.join(save_dir, d)),
        )
        for old in tags[: max(0, len(tags) - max_num)]:
            os.remove(os.path.join(save_dir, old, "state.pt"))
            os.rmdir(os.path.join(save_dir, old))

    def load_ckpt(self, model, load_dir, tag=None, **kwargs):
        latest = os.path.join(load_dir, "latest")
        if tag is None and not os.path.isfile(latest):
            self.print(f"Warning: no checkpoint found at {load_dir}, starting from scratch.")
            return None, {}
        tag = tag or open(latest).read().strip()
        path = os.path.join(load_dir, tag, "state.pt")
        # weights_only: the file holds tensors, numbers and RNG states only; never unpickle arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        return path, state["client_state"]


# openrlhf/utils/deepspeed/deepspeed_utils.py: get_optimizer_grouped_parameters' list, copied because importing that
# module imports deepspeed (tens of seconds on CPU) for four lines.
NO_DECAY_NAMES = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")


def _no_decay(name: str) -> bool:
    return any(nd in name for nd in NO_DECAY_NAMES)


def load_tokenizer(path):
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import ensure_pad_token

    return ensure_pad_token(AutoTokenizer.from_pretrained(path, trust_remote_code=False))


def build_model(args, spec, ds_config=None):
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
        path, spec, pooling=args.moslim.pooling, dtype=torch.float32, attn_implementation=args.ds.attn_implementation
    )
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


def train(args, rows=None, eval_rows=None) -> dict:
    """Train, evaluate on held-out rows, save the checkpoint with its calibration statistics; returns the metrics."""
    from moslim_plugin.core.mappings import MappingStats

    spec = load_spec(args.moslim.spec)
    # All input is checked before a model is built: a bad row fails in seconds, not after an hour of training.
    rows = load_rows(rows if rows is not None else args.data.dataset, spec, args.data.dataset or "<rows>")
    rows = rows[: args.data.max_samples]
    if eval_rows is not None or args.eval.dataset:
        eval_source = args.eval.dataset or "<eval rows>"
        train_rows, eval_rows = (
            rows,
            load_rows(eval_rows if eval_rows is not None else args.eval.dataset, spec, eval_source),
        )
    else:
        train_rows, eval_rows = split_by_question(rows, args.moslim.eval_ratio, args.train.seed)
    if not eval_rows or len(train_rows) < args.train.batch_size:
        raise ValueError(
            f"{args.data.dataset or '<rows>'}: {len(train_rows)} training / {len(eval_rows)} held-out rows after the "
            f"split by question (--moslim.eval_ratio {args.moslim.eval_ratio}); need >= --train.batch_size "
            f"({args.train.batch_size}) training rows and >= 1 held-out row"
        )

    tokenizer = load_tokenizer(args.model.model_name_or_path)
    train_set = encode_rows(train_rows, tokenizer, spec, args.data.max_len, args.data.dataset or "<rows>")
    eval_set = encode_rows(eval_rows, tokenizer, spec, args.data.max_len, args.eval.dataset or "<held-out rows>")

    use_deepspeed = torch.cuda.is_available()
    if use_deepspeed:
        from openrlhf.utils import get_strategy

        strategy = get_strategy(args)
    else:
        strategy = TorchStrategy(args)
    strategy.setup_distributed()
    device = torch.device("cuda", torch.cuda.current_device()) if use_deepspeed else torch.device("cpu")
    model = build_model(args, spec, strategy.get_ds_train_config() if use_deepspeed else None)

    collate_fn = partial(collate, tokenizer=tokenizer)
    train_loader = strategy.setup_dataloader(train_set, args.train.micro_batch_size, True, True, collate_fn)
    eval_loader = strategy.setup_dataloader(
        eval_set, args.train.micro_batch_size, True, False, collate_fn, drop_last=False
    )
    steps_per_epoch = len(train_rows) // args.train.batch_size
    max_steps = (
        args.train.max_steps if args.train.max_steps > 0 else math.ceil(args.train.max_epochs * steps_per_epoch)
    )
    cfg = dict(
        optim="adam",
        muon={},
        adam=vars(args.adam),
        lr_scheduler=args.lr_scheduler,
        lr_warmup_ratio=args.lr_warmup_ratio,
        min_lr_ratio=args.min_lr_ratio,
        max_norm=args.max_norm,
        scheduler_steps=max_steps,
    )
    model, optimizer, scheduler = strategy.prepare((model, cfg))
    class_weights = balanced_class_weights(train_rows, spec) if args.moslim.class_weights == "balanced" else None

    consumed_samples = 0
    if args.ckpt.load_enable and os.path.exists(args.ckpt.path):
        load_path, states = strategy.load_ckpt(model, args.ckpt.path)
        if load_path is not None:
            consumed_samples = states["consumed_samples"]
            strategy.print(f"Loaded the checkpoint: {load_path}, consumed_samples: {consumed_samples}")

    log, close_logger = open_logger(args) if strategy.is_rank_0() else (lambda *a: None, lambda: None)
    global_step = consumed_samples // args.train.batch_size
    micro_step = 0
    bar = tqdm(total=max_steps, initial=global_step, desc="train-rm", disable=not strategy.is_rank_0())
    start = time.perf_counter()
    epoch = global_step // max(steps_per_epoch, 1)
    while global_step < max_steps:
        skip = consumed_samples - epoch * steps_per_epoch * args.train.batch_size
        train_loader.sampler.set_epoch(epoch, consumed_samples=max(skip, 0))
        for inputs, labels in train_loader:
            logits = model(**{k: v.to(device) for k, v in inputs.items()})
            losses = head_losses(logits, labels.to(device), spec, class_weights, args.moslim.label_smoothing)
            present = [loss for loss in losses if loss is not None]
            # A micro-batch without any label still goes through backward: DeepSpeed counts micro-steps.
            loss = torch.stack(present).mean() if present else logits.sum() * 0.0
            strategy.backward(loss, model, optimizer)
            strategy.optimizer_step(optimizer, model, scheduler)
            micro_step += 1
            if micro_step % strategy.accumulated_gradient:
                continue
            global_step += 1
            consumed_samples = global_step * args.train.batch_size
            logs = {
                "train/loss": loss.item(),
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": strategy.get_grad_norm(model),
            }
            logs.update({f"train/{n}_loss": x.item() for n, x in zip(spec.names, losses) if x is not None})
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update()
            if global_step % args.logger.logging_steps == 0:
                log(strategy.all_reduce(logs), global_step)
            if args.eval.steps > 0 and global_step % args.eval.steps == 0:
                metrics = head_metrics(*predict(model, eval_loader, device), spec)
                log({f"eval/{n}/{k}": v for n, m in metrics.items() for k, v in m.items()}, global_step)
            if args.ckpt.save_steps > 0 and global_step % args.ckpt.save_steps == 0:
                strategy.save_ckpt(
                    model,
                    args.ckpt.path,
                    f"global_step{global_step}",
                    args.ckpt.max_num,
                    args.ckpt.max_mem,
                    {"consumed_samples": consumed_samples},
                )
            # An epoch is steps_per_epoch optimizer steps (as in OpenRLHF): no partial accumulation carries over.
            if global_step >= max_steps or global_step % steps_per_epoch == 0:
                break
        epoch += 1
    bar.close()
    train_seconds = time.perf_counter() - start  # the loop alone: no model load, evaluation or save

    probs, labels = predict(model, eval_loader, device)
    metrics = head_metrics(probs, labels, spec)
    log({f"eval/{n}/{k}": v for n, m in metrics.items() for k, v in m.items()}, global_step)
    close_logger()
    unwrapped = strategy._unwrap_model(model)
    unwrapped.stats = MappingStats.from_probs(probs, spec.levels)
    save_model(unwrapped, tokenizer, args, strategy)
    result = {
        "output_dir": args.ckpt.output_dir,
        "global_step": global_step,
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "train_seconds": train_seconds,
        "metrics": metrics,
    }
    if strategy.is_rank_0():
        with open(os.path.join(args.ckpt.output_dir, "eval_metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
        for name, m in metrics.items():
            strategy.print(f"[eval] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    return result


def save_model(model, tokenizer, args, strategy):
    """HF folder via MultiHeadRewardModel.save_pretrained; LoRA merged in, ZeRO-3 shards gathered first."""
    if args.ds.lora.rank > 0:
        model.backbone = model.backbone.merge_and_unload()
    if args.ds.zero_stage == 3 and torch.cuda.is_available():
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
    p.add_argument("--data.max_len", type=int, default=512)
    p.add_argument("--eval.dataset", type=str, default=None, help="held-out rows (default: split by question)")
    p.add_argument("--eval.steps", type=int, default=-1)
    p.add_argument("--train.micro_batch_size", type=int, default=1)
    p.add_argument("--train.batch_size", type=int, default=128)
    p.add_argument("--train.max_epochs", type=int, default=1)
    p.add_argument("--train.max_steps", type=int, default=-1, help="optimizer steps; overrides max_epochs when > 0")
    p.add_argument("--train.seed", type=int, default=42)
    p.add_argument("--train.full_determinism_enable", action="store_true", default=False)
    p.add_argument("--adam.lr", type=float, default=9e-6)
    p.add_argument("--adam.betas", type=float, nargs=2, default=(0.9, 0.95))
    p.add_argument("--adam.eps", type=float, default=1e-8)
    p.add_argument("--adam.weight_decay", type=float, default=0.0)
    p.add_argument("--lr_scheduler", type=str, default="cosine_with_min_lr")
    p.add_argument("--lr_warmup_ratio", type=float, default=0.03)
    p.add_argument("--min_lr_ratio", type=float, default=0.1)
    p.add_argument("--max_norm", type=float, default=1.0)
    p.add_argument("--ckpt.output_dir", type=str, default="./ckpt")
    p.add_argument("--ckpt.path", type=str, default="./ckpt/checkpoints_rm")
    p.add_argument("--ckpt.save_steps", type=int, default=-1)
    p.add_argument("--ckpt.max_num", type=int, default=3)
    p.add_argument("--ckpt.max_mem", type=int, default=int(1e8))
    p.add_argument("--ckpt.load_enable", action="store_true", default=False)
    p.add_argument("--local_rank", type=int, default=-1)
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
    p.add_argument("--moslim.eval_ratio", type=float, default=0.1, help="held-out share of questions")
    p.add_argument("--moslim.label_smoothing", type=float, default=0.0)
    p.add_argument("--moslim.class_weights", type=str, default="none", choices=["none", "balanced"])
    return p


def parse_args(argv):
    from openrlhf.utils.config import hierarchize

    args = hierarchize(build_parser().parse_args(argv))
    if args.data.dataset is None:
        raise ValueError("--data.dataset is required (rows written by `moslim-openrlhf prepare-ratings`)")
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
