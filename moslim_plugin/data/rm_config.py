"""`TrainRMConfig`: every setting of `train-rm`, as its Python API and, field by field, as its command line.

In the manner of TRL's trainer configs: a dataclass whose fields carry their meaning. Each field is one flag,
declared once with `option(default, help, kind=..., choices=..., flag=...)` (moslim_plugin's one mechanism for flags):
its dotted name (OpenRLHF's, as in openrlhf/cli/train_rm.py where the flag exists there; `--moslim.<field>`
otherwise), default, help and accepted values. `build_parser` makes the argparse parser from the fields,
`TrainRMConfig.from_argv` the config from a command line, and `__post_init__` checks every field as its flag is
checked, so a config built in Python is refused exactly where the command line would be. Adding a flag is adding a
field.

    config = TrainRMConfig(model_name_or_path="all-MiniLM-L6-v2", spec="hh", output_dir="rm", max_epochs=2)
    train_reward_model(config, rows)   # moslim_plugin.data.train_rm
"""

import argparse
import dataclasses
import os
from types import SimpleNamespace

from transformers import SchedulerType

from moslim_plugin import (
    Range,
    UserError,
    add_options,
    check_options,
    flag_of,
    integer,
    nonnegative,
    nonnegative_int,
    option,
    option_values,
    positive,
    positive_int,
    probability,
    threads_option,
)
from moslim_plugin.core.spec import ObjectiveSpec

# --moslim.select: what the kept weights are best at. NLL by default: the mapping reads probabilities, so calibration
# counts. macro-F1 when the heads' levels are what is judged: NLL can turn upward an epoch or two before the rarer
# classes are learnt.
SELECTIONS = {
    "nll": "mean per-head negative log-likelihood on the held-out rows (lower is better)",
    "macro_f1": "mean per-head macro-F1 on the held-out rows (higher is better)",
}
PREFIX = "moslim"  # the flags of fields that name no other: --moslim.<field>


@dataclasses.dataclass
class TrainRMConfig:
    """train-rm's settings. `dataset` / `eval_dataset` are prepare-ratings files; `train_reward_model(config, rows)`
    takes rows in memory instead. `spec` is a spec file, a bundled spec name or an ObjectiveSpec."""

    model_name_or_path: str = option(
        None, "the backbone (HF folder)", flag="--model.model_name_or_path", required=True
    )
    gradient_checkpointing_enable: bool = option(False, flag="--model.gradient_checkpointing_enable")
    gradient_checkpointing_reentrant: bool = option(False, flag="--model.gradient_checkpointing_reentrant")
    dataset: str | None = option(None, "rows from prepare-ratings (.jsonl)", flag="--data.dataset")
    max_samples: int = option(1000000, "the first N rows", kind=positive_int, flag="--data.max_samples")
    max_len: int = option(
        512, "tokens per row, at most the backbone's position limit", kind=positive_int, flag="--data.max_len"
    )
    eval_dataset: str | None = option(
        None, "held-out rows (default: --moslim.eval_ratio of the rows' groups)", flag="--eval.dataset"
    )
    eval_steps: int = option(-1, "evaluate every N steps", kind=Range(int, 1, special=(-1, "every epoch")),
                             flag="--eval.steps")  # fmt: skip
    patience: int = option(3, "stop after N evaluations without gain (0: never)", kind=nonnegative_int,
                           flag="--eval.patience")  # fmt: skip
    micro_batch_size: int = option(1, kind=positive_int, flag="--train.micro_batch_size")
    batch_size: int = option(128, kind=positive_int, flag="--train.batch_size")
    max_epochs: int = option(1, kind=positive_int, flag="--train.max_epochs")
    max_steps: int = option(
        -1,
        "optimizer steps; overrides --train.max_epochs",
        kind=Range(int, 1, special=(-1, "use --train.max_epochs")),
        flag="--train.max_steps",
    )
    seed: int = option(42, kind=integer, flag="--train.seed")
    full_determinism_enable: bool = option(False, flag="--train.full_determinism_enable")
    lr: float = option(9e-6, kind=positive, flag="--adam.lr")
    adam_betas: list = option([0.9, 0.95], kind=Range(float, 0, 1, high_open=True), nargs=2, flag="--adam.betas")
    adam_eps: float = option(1e-8, kind=positive, flag="--adam.eps")
    weight_decay: float = option(0.0, kind=nonnegative, flag="--adam.weight_decay")
    # The choices are checked here: a typo would otherwise fail only after the model is built.
    lr_scheduler: str = option("cosine_with_min_lr", choices=[s.value for s in SchedulerType], flag="--lr_scheduler")
    lr_warmup_ratio: float = option(0.03, kind=probability, flag="--lr_warmup_ratio")
    min_lr_ratio: float = option(0.1, kind=probability, flag="--min_lr_ratio")
    max_norm: float = option(1.0, "gradient clipping (0: none)", kind=nonnegative, flag="--max_norm")
    output_dir: str = option("./ckpt", flag="--ckpt.output_dir")
    # A resumable checkpoint is saved at every held-out evaluation: a killed run loses at most one evaluation's
    # work, with nothing to set in advance. Rerunning the command then asks for --ckpt.load_enable or
    # --ckpt.overwrite, so an interrupted run is never resumed, nor thrown away, without being told.
    ckpt_path: str | None = option(None, "resumable checkpoints (default: <ckpt.output_dir>/checkpoints)",
                                   flag="--ckpt.path")  # fmt: skip
    save_steps: int = option(
        -1, "also save a checkpoint every N optimizer steps (one is saved at every evaluation)",
        kind=Range(int, 1, special=(-1, "only at evaluations")), flag="--ckpt.save_steps",
    )  # fmt: skip
    max_num: int = option(3, "checkpoints kept, newest first (0: none)", kind=nonnegative_int, flag="--ckpt.max_num")
    max_mem: int = option(int(1e8), kind=positive_int, flag="--ckpt.max_mem")
    load_enable: bool = option(False, "resume from the newest checkpoint in --ckpt.path", flag="--ckpt.load_enable")
    overwrite: bool = option(
        False, "replace a model in output_dir, and start over from earlier checkpoints", flag="--ckpt.overwrite"
    )
    local_rank: int = option(-1, kind=Range(int, 0, special=(-1, "no launcher")), flag="--local_rank")
    # Ours. auto is OpenRLHF's behaviour; cpu / cuda run in this process without a launcher (e.g. inside the demo).
    device: str = option(
        "auto", "auto: DeepSpeed on CUDA if there is a GPU, else plain torch on CPU; cpu / cuda: plain fp32 torch",
        choices=["auto", "cpu", "cuda"], flag="--device",
    )  # fmt: skip
    threads: int | None = threads_option()
    zero_stage: int = option(2, kind=Range(int, 0, 3), flag="--ds.zero_stage")
    param_dtype: str = option("bf16", "GPU only; CPU: fp32", choices=["bf16", "fp16"], flag="--ds.param_dtype")
    attn_implementation: str = option("sdpa", flag="--ds.attn_implementation")
    adam_offload: bool = option(False, flag="--ds.adam_offload")
    zpg: int = option(1, kind=positive_int, flag="--ds.zpg")
    grad_accum_dtype: str | None = option(None, flag="--ds.grad_accum_dtype")
    overlap_comm: bool = option(False, flag="--ds.overlap_comm")
    lora_rank: int = option(0, kind=nonnegative_int, flag="--ds.lora.rank")
    lora_alpha: int = option(16, kind=positive_int, flag="--ds.lora.alpha")
    lora_dropout: float = option(0.0, kind=Range(float, 0, 1, high_open=True), flag="--ds.lora.dropout")
    lora_target_modules: str | list = option("all-linear", kind=str, nargs="*", flag="--ds.lora.target_modules")
    logging_steps: int = option(1, kind=positive_int, flag="--logger.logging_steps")
    tensorboard_dir: str | None = option(None, flag="--logger.tensorboard_dir")
    wandb_key: str | None = option(None, flag="--logger.wandb.key")
    wandb_project: str = option("moslim_train_rm", flag="--logger.wandb.project")
    wandb_run_name: str | None = option(
        None, "default: rm_<month><day>T<hour>:<minute>", flag="--logger.wandb.run_name"
    )
    # Ours: --moslim.<field>.
    spec: str | ObjectiveSpec = option(None, "objective spec (YAML/JSON or a bundled name)", required=True)
    pooling: str = option("auto", choices=["auto", "last", "cls", "mean"])
    number_words: bool = option(
        False,
        "the RM reads each response word after its index (1 Sure, 2 here): lets a head count words; saved in the "
        "checkpoint, so every scorer of it reads the same",
    )
    eval_ratio: float = option(
        0.1, "held-out share of the rows' groups (see --moslim.split_key), exact to within one group",
        kind=Range(float, 0, 1, low_open=True, high_open=True),
    )  # fmt: skip
    split_key: str = option(
        "question", "rows are grouped by this field, dotted path or template ('{context}') before the held-out "
        "split, so that a group never lands in both parts: e.g. a conversation id kept by prepare-ratings "
        "--moslim.keep_fields; the split is written to <ckpt.output_dir>/split.json and held_out.jsonl",
    )  # fmt: skip
    label_smoothing: float = option(0.0, kind=Range(float, 0, 1, high_open=True))
    class_weights: str = option("none", choices=["none", "balanced"])
    select: str = option("nll", "model selection", choices=list(SELECTIONS))

    def __post_init__(self):
        check_options(self, PREFIX)  # a value given in Python is refused as its flag would be
        if self.ckpt_path is None:
            self.ckpt_path = os.path.join(self.output_dir, "checkpoints")
        if self.batch_size % self.micro_batch_size:
            raise UserError(
                f"--train.batch_size {self.batch_size} is not a multiple of --train.micro_batch_size "
                f"{self.micro_batch_size}: each optimizer step accumulates whole micro-batches (e.g. 8 and 4, or 8 "
                "and 8)"
            )

    @classmethod
    def from_argv(cls, argv) -> "TrainRMConfig":
        return cls(**option_values(cls, build_parser().parse_args(argv), PREFIX))

    def strategy_args(self) -> SimpleNamespace:
        """The settings in OpenRLHF's nested layout (`args.train.batch_size`, `args.ds.zero_stage`): what its
        DeepspeedStrategy, and `TorchStrategy` in its place, read."""
        from openrlhf.utils.config import hierarchize

        flat = {flag_of(field, PREFIX)[2:]: getattr(self, field.name) for field in dataclasses.fields(self)}
        return hierarchize(argparse.Namespace(**flat))


def build_parser() -> argparse.ArgumentParser:
    """train-rm's command line, one flag per TrainRMConfig field, in field order."""
    p = argparse.ArgumentParser(
        prog="moslim-openrlhf train-rm",
        description="Train the multi-head classification reward model: per-head cross-entropy on (question, "
        "response, labels) rows (`moslim-openrlhf prepare-ratings` writes them).",
        epilog="Every held-out evaluation is printed as it happens and saves a resumable checkpoint: after a kill, "
        "run the same command with --ckpt.load_enable. The held-out split is written beside the model (split.json, "
        "held_out.jsonl), where `evaluate-rm --model <ckpt.output_dir>` finds it.",
    )
    add_options(p, TrainRMConfig, PREFIX)
    return p
