"""train-rm's files: resumable checkpoints that refuse a run with other settings, and the final model folder."""

import hashlib
import json
import os
import pickle
import shutil

from moslim_plugin import UserError, writable
from moslim_plugin.data.cpu_strategy import TorchStrategy

META_FILE = "moslim_resume.json"


def run_settings(config, spec, data: str) -> dict:
    """What a checkpoint must share with the run that resumes it: the heads' meaning and shapes, the batching, the
    data (`data`: the fingerprint of the training and held-out rows, so of the split too)."""
    from moslim_plugin.core.rm import NUMBERED_WORDS

    return {
        "objectives": list(spec.names),
        "head_levels": list(spec.levels),
        "spec_fingerprint": spec.fingerprint,
        "train.batch_size": config.batch_size,
        "train.micro_batch_size": config.micro_batch_size,
        "moslim.select": config.select,  # the saved best value is in its units
        # The weights read the words one way or the other (`true`: the earlier numbering, refused as rm.py does).
        "moslim.number_words": config.number_words and NUMBERED_WORDS,
        "rows": data,
    }


def rows_fingerprint(train_rows, eval_rows) -> str:
    payload = json.dumps([train_rows, eval_rows], sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def checkpoint_tags(root) -> list[str]:
    """The checkpoint folders (global_step<N>) in `root`, newest first."""
    if not os.path.isdir(root):
        return []
    tags = [d for d in os.listdir(root) if d.startswith("global_step") and d[11:].isdigit()]
    return sorted(tags, key=lambda d: int(d[11:]), reverse=True)


def save_checkpoint(config, spec, strategy, model, state, data: str):
    tag = f"global_step{state['global_step']}"
    strategy.save_ckpt(model, config.ckpt_path, tag, config.max_num, config.max_mem, state)
    if strategy.is_rank_0():
        # Written after the weights: a tag folder without this file is an incomplete checkpoint.
        with open(os.path.join(config.ckpt_path, tag, META_FILE), "w") as f:
            json.dump(run_settings(config, spec, data), f)


def resume(config, spec, strategy, model, data: str) -> dict | None:
    """Loop state of the newest readable checkpoint in --ckpt.path, or None. Settings must match (else refused);
    an unreadable or incomplete checkpoint falls back to the previous one, with a warning naming it."""
    root = config.ckpt_path
    if not config.load_enable or not os.path.isdir(root):
        return None
    expected, bad = run_settings(config, spec, data), []
    for tag in checkpoint_tags(root):
        current = meta = os.path.join(root, tag, META_FILE)
        try:
            with open(meta) as f:
                saved = json.load(f)
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


def check_output_dir(config):
    """Every folder the run will write, checked before the training; no training over a finished model, or past an
    interrupted run's checkpoints, without being told to."""
    out = config.output_dir
    writable(out, "--ckpt.output_dir")
    if config.max_num > 0 or config.load_enable:
        writable(config.ckpt_path, "--ckpt.path")
    if config.tensorboard_dir:
        writable(config.tensorboard_dir, "--logger.tensorboard_dir")
    if os.path.isfile(os.path.join(out, "config.json")) and not config.overwrite:
        raise UserError(
            f"--ckpt.output_dir {out} already holds a model (config.json): choose another folder or pass "
            "--ckpt.overwrite to replace it"
        )
    tags = checkpoint_tags(config.ckpt_path)
    if tags and not config.load_enable:
        if not config.overwrite:
            raise UserError(
                f"--ckpt.path {config.ckpt_path} holds checkpoints of an earlier run (newest: {tags[0]}): pass "
                "--ckpt.load_enable to resume it, or --ckpt.overwrite to start over"
            )
        # The checkpoints only, not the folder (it may be the user's); every rank may get here, hence ignore_errors.
        for tag in tags:
            shutil.rmtree(os.path.join(config.ckpt_path, tag), ignore_errors=True)


def save_model(model, tokenizer, config, strategy):
    """HF folder via MultiHeadRewardModel.save_pretrained; LoRA merged in, ZeRO-3 shards gathered first."""
    if config.lora_rank > 0:
        model.backbone = model.backbone.merge_and_unload()
    if config.zero_stage == 3 and not isinstance(strategy, TorchStrategy):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if strategy.is_rank_0():
                model.save_pretrained(config.output_dir, tokenizer=tokenizer)
    elif strategy.is_rank_0():
        model.save_pretrained(config.output_dir, tokenizer=tokenizer)
