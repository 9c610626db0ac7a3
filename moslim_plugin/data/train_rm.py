"""Train the multi-head classification reward model: per-head cross-entropy on (question, response, labels) rows.

Rows come from `moslim-openrlhf prepare-ratings` (`{"question", "response", "labels": {objective: level | null}}`);
a null label masks that head for that row. Flags mirror `openrlhf/cli/train_rm.py`. With CUDA the model is trained
through OpenRLHF's DeepspeedStrategy (ZeRO, bf16, LoRA, gradient checkpointing); without CUDA, or with --device
cpu / cuda, the same loop runs on `TorchStrategy`, the subset of the DeepspeedStrategy interface the loop uses, in
plain fp32 torch (AdamW) on that device, in this process (no launcher: what the one-machine demo needs). Rows are
grouped by question (or --moslim.split_key: any field or template of the rows) and --moslim.eval_ratio of the groups
held out, whole: no group in both parts. The split is written beside the model (split.json, held_out.jsonl), so
`evaluate-rm --model <output_dir>` measures the same held-out rows.

Model selection: the held-out rows are evaluated every epoch (or every --eval.steps steps); the weights with the
lowest mean per-head negative log-likelihood (or, with --moslim.select macro_f1, the highest mean per-head macro-F1)
are kept, and training stops after --eval.patience evaluations without gain. Each evaluation is printed as it
happens (per head: accuracy, macro-F1 and NLL against the majority-class and class-prior baselines of the training
labels). The kept weights' held-out probabilities give the final per-head metrics (also mean absolute level error,
expected calibration error, confusion matrix) and the calibration statistics the mapping needs, saved inside the
checkpoint.

Rule objectives (`rule:` in the spec, docs/rules.md) get no head: the Scorer checks them exactly. Their labels are
ignored with a note saying how many rows carried them, so one ratings file serves a spec whether an objective is
learned or a rule; a spec of rules only is refused (nothing to train). The checkpoint carries the whole spec.

Every evaluation also saves a resumable checkpoint (in <output_dir>/checkpoints; --ckpt.max_num 0: none). A killed
run is resumed by the same command plus --ckpt.load_enable, which checks the objectives, head shapes, spec
fingerprint, batch sizes and rows saved with each checkpoint and refuses a mismatch; an unreadable or incomplete
newest checkpoint falls back to the previous one. Without --ckpt.load_enable (or --ckpt.overwrite to start over) a
command that finds an earlier run's checkpoints stops and says so.

    moslim-openrlhf train-rm --model.model_name_or_path <backbone> --moslim.spec hh \
        --data.dataset ratings.jsonl --ckpt.output_dir ./rm --train.micro_batch_size 8 --train.batch_size 32

From Python: `train_reward_model(TrainRMConfig(model_name_or_path=..., spec="hh", output_dir="rm"), rows)`; the
settings, one field per flag, are in rm_config.py, the checkpoint files in rm_checkpoint.py.
"""

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import torch
from tqdm import tqdm

from moslim_plugin import UserError, set_threads
from moslim_plugin.core.rm import check_plain_backbone, max_positions
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.cpu_strategy import TorchStrategy
from moslim_plugin.data.rm_checkpoint import check_output_dir, resume, rows_fingerprint, save_checkpoint, save_model
from moslim_plugin.data.rm_config import SELECTIONS, TrainRMConfig
from moslim_plugin.data.rm_metrics import (
    IGNORE,
    balanced_class_weights,
    head_losses,
    head_metrics,
    predict,
    scalar_logs,
)
from moslim_plugin.data.rm_rows import (
    HELD_OUT_FILE,
    collate,
    encode_rows,
    load_rows,
    load_tokenizer,
    split_by_group,
)


def build_model(config, spec, tokenizer, ds_config=None):
    from moslim_plugin.core.rm import MultiHeadRewardModel

    path = config.model_name_or_path
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
        pooling=config.pooling,
        number_words=config.number_words,
        dtype=torch.float32,
        attn_implementation=config.attn_implementation,
    )
    # load_tokenizer's line-break token, when its id is past the embedding (a padded vocabulary may already hold it).
    # Only that token: any other tokenizer/model size mismatch stays the error it is.
    if tokenizer.get_added_vocab().get("\n", -1) >= model.backbone.get_input_embeddings().num_embeddings:
        model.backbone.resize_token_embeddings(len(tokenizer))
    if config.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            bias="none",
        )
        model.backbone = get_peft_model(model.backbone, lora)
    if config.gradient_checkpointing_enable:
        model.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": config.gradient_checkpointing_reentrant}
        )
    return model


def open_logger(config):
    """wandb when --logger.wandb.key is set, else TensorBoard when --logger.tensorboard_dir is (OpenRLHF's rule)."""
    run_name = config.wandb_run_name or datetime.now().strftime("rm_%m%dT%H:%M")
    if config.wandb_key:
        import wandb

        wandb.login(key=config.wandb_key)
        run = wandb.init(project=config.wandb_project, name=run_name, config=vars(config), reinit=True)
        return lambda logs, step: run.log({**logs, "global_step": step}), run.finish
    if config.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=os.path.join(config.tensorboard_dir, run_name))

        def log(logs, step):
            for key, value in logs.items():
                writer.add_scalar(key, value, step)

        return log, writer.close
    return lambda logs, step: None, lambda: None


def split_rows(config, spec, rows, eval_rows):
    """(training rows, held-out rows, the split's record): the held-out file when given, else --moslim.eval_ratio
    of the rows' groups (--moslim.split_key)."""
    source = config.dataset or "<rows>"
    # All input is checked before a model is built: a bad row fails in seconds, not after an hour of training.
    rows = load_rows(rows if rows is not None else config.dataset, spec, source)[: config.max_samples]
    if eval_rows is not None or config.eval_dataset:
        eval_source = config.eval_dataset or "<eval rows>"
        train_rows = rows
        eval_rows = load_rows(eval_rows if eval_rows is not None else config.eval_dataset, spec, eval_source)
        record = {"eval_dataset": eval_source, "train_rows": len(train_rows), "held_out_rows": len(eval_rows)}
        what = f"held-out rows from {eval_source}"
    else:
        train_rows, eval_rows, record = split_by_group(rows, config.eval_ratio, config.seed, config.split_key, source)
        what = (
            f"held out {record['held_out_groups']} of {record['groups']} groups by --moslim.split_key "
            f"{config.split_key!r} (--moslim.eval_ratio {config.eval_ratio})"
        )
    if len(train_rows) < config.batch_size:
        raise UserError(
            f"{source}: {len(train_rows)} training rows, fewer than --train.batch_size {config.batch_size}; lower "
            "--train.batch_size (and --train.micro_batch_size)"
        )
    print(f"[split] {what}: {len(train_rows)} training / {len(eval_rows)} held-out rows")
    return train_rows, eval_rows, record


def small_data_advice(config, train_rows: int, steps_per_epoch: int, max_steps: int) -> str | None:
    """The warning for a run of fewer than MIN_STEPS optimizer steps, with flags and values that give enough."""
    if max_steps >= MIN_STEPS:
        return None
    said = f"{max_steps} optimizer steps in all"
    if config.max_steps > 0:
        return f"Warning: {said} (--train.max_steps {config.max_steps}): set --train.max_steps {MIN_STEPS} or more"
    # A batch of about a tenth of the rows (a power of two, 8 at least, never above the one given), and the epochs
    # that then reach MIN_STEPS: small data wants more, smaller steps over several passes.
    batch = min(config.batch_size, max(8, 2 ** int(math.log2(max(train_rows // 10, 1)))))
    batch = min(batch, train_rows)
    per_epoch = train_rows // batch
    epochs = max(config.max_epochs, math.ceil(MIN_STEPS / per_epoch))
    flags = [f"--train.batch_size {batch}"] * (batch != config.batch_size)
    if batch % config.micro_batch_size:
        flags.append(f"--train.micro_batch_size {batch}")
    flags += [f"--train.max_epochs {epochs}"] * (epochs != config.max_epochs)
    return (
        f"Warning: {said} ({train_rows} training rows // --train.batch_size {config.batch_size} = {steps_per_epoch} "
        f"per epoch x --train.max_epochs {config.max_epochs}); a model barely moves in under {MIN_STEPS}. For "
        f"{train_rows} rows: {' '.join(flags)} ({per_epoch} steps per epoch, {epochs * per_epoch} in all)"
    )


MIN_STEPS = 20


def check_labels(spec, heads, rows, source: str) -> str | None:
    """Refuse rows where no learned objective has a label (no head would learn anything); return the note that the
    labels of rule objectives are ignored, or None when no row has one."""
    learned = sum(any(row["labels"].get(name) is not None for name in heads.names) for row in rows)
    if not learned:
        raise UserError(f"{source}: no row has a label for a learned objective {list(heads.names)}")
    ignored = {
        o.name: n
        for o in spec.objectives
        if o.rule is not None and (n := sum(row["labels"].get(o.name) is not None for row in rows))
    }
    if not ignored:
        return None
    counts = ", ".join(f"{name} ({n} rows)" for name, n in ignored.items())
    return (
        f"train-rm: note: labels for rule objectives are ignored: {counts}; a rule objective is checked exactly by "
        f"its rule and gets no head (heads: {list(heads.names)})"
    )


@dataclass
class Run:
    """What the training loop works with, built once by `train_reward_model`."""

    config: TrainRMConfig
    spec: object  # the learned objectives (`spec.learned_spec()`): one head each, in the order of the labels
    strategy: object
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    train_loader: object
    eval_loader: object
    device: torch.device
    class_weights: list | None
    train_labels: torch.Tensor  # the baselines' class prior and majority class come from them
    steps_per_epoch: int
    max_steps: int
    log: object
    data: str  # rows_fingerprint: a checkpoint resumes only on the same rows
    eval_seconds: float = 0.0  # held-out evaluations and checkpoints, left out of the reported training time


def evaluate_and_select(run: Run, state: dict) -> None:
    """Held-out metrics now, printed; the weights are kept when they beat the best so far (see SELECTIONS), and a
    resumable checkpoint is saved. The history holds the criterion as a loss, lower is better: NLL, or 1 - macro-F1."""
    start = time.perf_counter()
    probs, labels = predict(run.model, run.eval_loader, run.device)
    metrics = head_metrics(probs, labels, run.spec, prior_labels=run.train_labels)
    key = run.config.select
    value = sum(m[key] for m in metrics.values() if m["n"]) / sum(bool(m["n"]) for m in metrics.values())
    value = value if key == "nll" else 1.0 - value
    # Under DeepSpeed each rank sees its shard of the held-out rows: all ranks must keep and stop alike.
    value = float(run.strategy.all_reduce(value))
    step = state["global_step"]
    state["history"].append([step, value])
    run.log({**scalar_logs(metrics), f"eval/selection_{key}": value}, step)
    if value < state["best_value"]:
        weights = run.strategy._unwrap_model(run.model).state_dict()
        state.update(best_value=value, best_step=step, evals_without_gain=0)
        state["best_weights"] = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        verdict = "best so far, kept"
    else:
        state["evals_without_gain"] += 1
        patience = f" of --eval.patience {run.config.patience}" if run.config.patience > 0 else ""
        verdict = f"no gain for {state['evals_without_gain']}{patience}"
    if run.strategy.is_rank_0():
        heads = " | ".join(
            f"{name} acc {m['accuracy']:.3f} (majority {m['majority_accuracy']:.3f}) F1 {m['macro_f1']:.3f} NLL "
            f"{m['nll']:.3f} (prior {m['prior_nll']:.3f})"
            for name, m in metrics.items()
            if m["n"]
        )
        selection = "NLL" if key == "nll" else "1 - macro-F1"
        tqdm.write(
            f"[eval] step {step}/{run.max_steps} (epoch {step / run.steps_per_epoch:.1f}): {heads} || "
            f"{selection} {value:.4f}, {verdict}"
        )
    if run.config.max_num > 0:
        save_checkpoint(run.config, run.spec, run.strategy, run.model, state, run.data)
    run.eval_seconds += time.perf_counter() - start


def train_loop(run: Run, state: dict) -> None:
    """Optimizer steps until max_steps or early stopping; evaluates, keeps the best weights and checkpoints."""
    config, strategy = run.config, run.strategy
    bar = tqdm(total=run.max_steps, initial=state["global_step"], desc="train-rm", disable=not strategy.is_rank_0())
    epoch = state["global_step"] // run.steps_per_epoch
    micro_step = 0
    # from_pretrained leaves the backbone in eval mode: without this the steps before the first evaluation would run
    # without dropout, and a run resumed after an evaluation would not retrace the one it continues.
    run.model.train()
    while state["global_step"] < run.max_steps and not stop_early(config, state):
        skip = state["consumed_samples"] - epoch * run.steps_per_epoch * config.batch_size
        run.train_loader.sampler.set_epoch(epoch, consumed_samples=max(skip, 0))
        for inputs, labels in run.train_loader:
            logits = run.model(**{k: v.to(run.device) for k, v in inputs.items()})
            losses = head_losses(logits, labels.to(run.device), run.spec, run.class_weights, config.label_smoothing)
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
            state["consumed_samples"] = step * config.batch_size
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update()
            if step % config.logging_steps == 0:
                logs = {"train/loss": loss.item(), "train/lr": run.scheduler.get_last_lr()[0]}
                logs["train/grad_norm"] = strategy.get_grad_norm(run.model)
                logs.update({f"train/{n}_loss": x.item() for n, x in zip(run.spec.names, losses) if x is not None})
                run.log(strategy.all_reduce(logs), step)
            end_of_epoch = step % run.steps_per_epoch == 0
            if (step % config.eval_steps == 0) if config.eval_steps > 0 else end_of_epoch:
                evaluate_and_select(run, state)
            elif config.save_steps > 0 and step % config.save_steps == 0 and config.max_num > 0:
                start = time.perf_counter()
                save_checkpoint(config, run.spec, strategy, run.model, state, run.data)
                run.eval_seconds += time.perf_counter() - start
            # An epoch is steps_per_epoch optimizer steps (as in OpenRLHF): no partial accumulation carries over.
            if step >= run.max_steps or end_of_epoch or stop_early(config, state):
                break
        epoch += 1
    bar.close()
    if not state["history"] or state["history"][-1][0] != state["global_step"]:
        evaluate_and_select(run, state)  # the last weights are a candidate too


def stop_early(config, state) -> bool:
    return config.patience > 0 and state["evals_without_gain"] >= config.patience


def train_reward_model(config: TrainRMConfig, rows=None, eval_rows=None) -> dict:
    """Train, keep the best weights on held-out rows, save them with their calibration statistics; returns metrics.
    `rows` / `eval_rows`: prepare-ratings rows in memory, read instead of the files `config.dataset` /
    `config.eval_dataset`."""
    for given, path, flag in (
        (rows, config.dataset, "--data.dataset"),
        (eval_rows, config.eval_dataset, "--eval.dataset"),
    ):
        if given is not None and path is not None:
            raise UserError(f"rows in memory and {flag} {path}: give one of them")
    if rows is None and config.dataset is None:
        raise UserError("--data.dataset is required (rows written by `moslim-openrlhf prepare-ratings`)")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch build sees no CUDA device; use --device cpu (or auto)")
    set_threads(config.threads)
    spec = load_spec(config.spec)
    heads = spec.learned_spec()  # a spec of rules only is refused here: there is nothing to train
    check_plain_backbone(config.model_name_or_path)
    positions = max_positions(config.model_name_or_path)  # past it the backbone fails inside its first forward
    if positions and config.max_len > positions:
        raise UserError(
            f"--data.max_len {config.max_len} exceeds what the backbone {config.model_name_or_path} can read "
            f"(max_position_embeddings {positions}): pass at most {positions}"
        )
    train_rows, eval_rows, split = split_rows(config, spec, rows, eval_rows)
    note = check_labels(spec, heads, train_rows + eval_rows, config.dataset or "<rows>")
    check_output_dir(config)
    tokenizer = load_tokenizer(config.model_name_or_path)
    limit, words = config.max_len, config.number_words
    train_set = encode_rows(train_rows, tokenizer, heads, limit, config.dataset or "<rows>", words)
    eval_set = encode_rows(eval_rows, tokenizer, heads, limit, config.eval_dataset or "<held-out rows>", words)

    use_deepspeed = config.device == "auto" and torch.cuda.is_available()
    if use_deepspeed:
        from openrlhf.utils import get_strategy

        strategy = get_strategy(config.strategy_args())
    else:
        strategy = TorchStrategy(config.strategy_args())
    strategy.setup_distributed()
    if note:
        strategy.print(note)
    if use_deepspeed:
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu" if config.device == "auto" else config.device)
    model = build_model(config, spec, tokenizer, strategy.get_ds_train_config() if use_deepspeed else None)
    if not use_deepspeed:
        model.to(device)  # the DeepSpeed engine places the model itself

    collate_fn = partial(collate, tokenizer=tokenizer)
    train_loader = strategy.setup_dataloader(train_set, config.micro_batch_size, True, True, collate_fn)
    eval_loader = strategy.setup_dataloader(eval_set, config.micro_batch_size, True, False, collate_fn, False)
    steps_per_epoch = len(train_rows) // config.batch_size
    max_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.max_epochs * steps_per_epoch)
    advice = small_data_advice(config, len(train_rows), steps_per_epoch, max_steps)
    if advice:
        strategy.print(advice)
    adam = dict(lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=config.weight_decay)
    cfg = dict(optim="adam", muon={}, adam=adam, lr_scheduler=config.lr_scheduler)
    cfg.update(lr_warmup_ratio=config.lr_warmup_ratio, min_lr_ratio=config.min_lr_ratio, max_norm=config.max_norm)
    model, optimizer, scheduler = strategy.prepare((model, {**cfg, "scheduler_steps": max_steps}))
    class_weights = balanced_class_weights(train_rows, heads) if config.class_weights == "balanced" else None
    data = rows_fingerprint(train_rows, eval_rows)
    state = resume(config, heads, strategy, model, data) or dict(
        consumed_samples=0, global_step=0, history=[], best_value=float("inf"), best_step=-1, evals_without_gain=0
    )
    state["global_step"] = state["consumed_samples"] // config.batch_size
    log, close_logger = open_logger(config) if strategy.is_rank_0() else (lambda *a: None, lambda: None)
    train_labels = torch.tensor(
        [[IGNORE if r["labels"].get(n) is None else r["labels"][n] for n in heads.names] for r in train_rows]
    )
    run = Run(
        config, heads, strategy, model, optimizer, scheduler, train_loader, eval_loader, device, class_weights,
        train_labels, steps_per_epoch, max_steps, log, data,
    )  # fmt: skip
    start = time.perf_counter()
    train_loop(run, state)
    train_seconds = time.perf_counter() - start - run.eval_seconds  # the loop alone: no load, evaluation or save
    close_logger()
    return finish(run, state, tokenizer, split, eval_rows, train_seconds)


def finish(run: Run, state: dict, tokenizer, split: dict, eval_rows, train_seconds) -> dict:
    """Load the best weights, measure them against the baselines, save them with their statistics."""
    from moslim_plugin.core.mappings import MappingStats

    config, spec, strategy = run.config, run.spec, run.strategy
    criterion = SELECTIONS[config.select]
    unwrapped = strategy._unwrap_model(run.model)
    unwrapped.load_state_dict(state["best_weights"])
    probs, labels = predict(run.model, run.eval_loader, run.device)
    metrics = head_metrics(probs, labels, spec, prior_labels=run.train_labels)
    unwrapped.stats = MappingStats.from_probs(probs, spec.levels)
    # The length the heads were trained and kept at: evaluate-rm scores at it by default, so that its numbers on the
    # held-out rows are train-rm's.
    unwrapped.config.moslim = {**unwrapped.config.moslim, "max_len": config.max_len}
    save_model(unwrapped, tokenizer, config, strategy)
    result = {
        "output_dir": config.output_dir,
        "global_step": state["global_step"],
        "selection": {"criterion": criterion, "best_step": state["best_step"], "history": state["history"]},
        "train_rows": split["train_rows"],
        "eval_rows": split["held_out_rows"],
        "split": split,
        "train_seconds": train_seconds,
        "metrics": metrics,
    }
    if strategy.is_rank_0():
        with open(os.path.join(config.output_dir, "eval_metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
        # The split beside the model: `evaluate-rm --model <output_dir>` reads held_out.jsonl by default.
        with open(os.path.join(config.output_dir, "split.json"), "w") as f:
            json.dump(split, f, indent=2)
        with open(os.path.join(config.output_dir, HELD_OUT_FILE), "w") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in eval_rows)
        strategy.print(f"[eval] kept step {state['best_step']} of {state['global_step']} ({criterion})")
        for name, m in metrics.items():
            strategy.print(f"[eval] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items() if k != "confusion"))
            if m["n"] and (m["accuracy"] < m["majority_accuracy"] or m["nll"] > m["prior_nll"]):
                strategy.print(
                    f"Warning: head {name} does not beat the baselines: accuracy {m['accuracy']:.3f} vs majority "
                    f"class {m['majority_accuracy']:.3f}, NLL {m['nll']:.3f} vs class prior {m['prior_nll']:.3f}"
                )
    return result


def main(argv=None) -> int:
    train_reward_model(TrainRMConfig.from_argv(argv))
    return 0
