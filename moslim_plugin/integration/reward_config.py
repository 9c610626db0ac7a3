"""One MOSLIM reward configuration, the same on every reward path, validated before anything expensive starts.

`RewardConfig` is built from the --moslim.* reward flags (`add_flags`: the same flags for `train_ppo_ray` and
`serve-reward`) and checked completely by `validate()`: the checkpoint is a MOSLIM reward model for the expected spec
(fingerprint), the mapping resolves, its keyword names AND values work (one synthetic batch is scored through the
real mapping: a value that would make every reward fail or be constant is refused here, not after an hour of
training), and the limits are in range. Then the same object travels to each path:

- in-process: `args.moslim.reward`, which OpenRLHF pickles to the reward-model actors;
- `--reward.remote_url <reward-func .py>`: as JSON in `MOSLIM_REWARD_CONFIG`, put into the Ray job's runtime env by
  the launcher (`env_vars()`); the file reads nothing else;
- `serve-reward`: the server reports its config on `GET /health`; the driver compares it with its own command line
  (`check_server`) and refuses a mismatch, naming both values.
"""

import copy
import dataclasses
import json
import math
import os
from pathlib import Path

from moslim_plugin import UserError
from moslim_plugin.integration.templates import resolve_template

ENV_VAR = "MOSLIM_REWARD_CONFIG"
# The per-setting env vars earlier releases read; a job that still sets them would silently get other values.
RETIRED_ENV_VARS = (
    "MOSLIM_RM_PATH", "MOSLIM_MAPPING", "MOSLIM_MAPPING_KWARGS", "MOSLIM_STRICT", "MOSLIM_FALLBACK_REWARD",
    "MOSLIM_TEMPLATE", "MOSLIM_RM_DEVICE", "MOSLIM_RM_DTYPE", "MOSLIM_MAX_LENGTH", "MOSLIM_MAX_BATCH",
    "MOSLIM_MAX_WAIT_MS", "MOSLIM_RM_BATCH",
)  # fmt: skip
DTYPES = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    rm_path: str | None = None  # the MOSLIM reward-model checkpoint folder
    mapping: str = "moslim"
    mapping_kwargs: dict = dataclasses.field(default_factory=dict)
    template: str = "auto"  # the policy's chat template, to split prompt and response (templates.TEMPLATES)
    max_length: int = 512  # reward-model tokens per (question, response); longer pairs are truncated and counted
    batch_size: int | None = None  # rows per reward-model call (None: 16 on CPU, 64 on GPU)
    strict: bool = False  # any unscorable sample stops the run (always so in-process)
    fallback_reward: float = 0.0  # reward of an unscorable sample when not strict
    max_error_share: float = 0.1  # more failures than this share of the last `error_window` samples stops the run
    error_window: int = 64
    device: str | None = None  # None: cuda if available
    dtype: str | None = None  # None: bf16 on cuda, fp32 on cpu
    spec_fingerprint: str | None = None  # of the checkpoint's spec; set by validate()

    # The fields that decide a sample's reward or the failure policy: a server must agree with the driver on these.
    COMPARED = ("mapping", "mapping_kwargs", "template", "max_length", "strict", "fallback_reward", "max_error_share",
                "error_window", "spec_fingerprint")  # fmt: skip

    @classmethod
    def from_flags(cls, flags, rm_path) -> "RewardConfig":
        """From the parsed `add_flags` flags (attributes without the `moslim.` prefix)."""
        try:
            kwargs = (
                json.loads(flags.mapping_kwargs) if isinstance(flags.mapping_kwargs, str) else flags.mapping_kwargs
            )
        except json.JSONDecodeError as e:
            raise UserError(f"--moslim.mapping_kwargs {flags.mapping_kwargs!r} is not JSON ({e})") from None
        if not isinstance(kwargs, dict):
            raise UserError(f"--moslim.mapping_kwargs must be a JSON object, got {flags.mapping_kwargs!r}")
        names = [
            f.name for f in dataclasses.fields(cls) if f.name not in ("rm_path", "mapping_kwargs", "spec_fingerprint")
        ]
        return cls(rm_path=rm_path, mapping_kwargs=kwargs, **{name: getattr(flags, name) for name in names})

    @classmethod
    def from_dict(cls, d: dict) -> "RewardConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            got = sorted(set(d) - known) if isinstance(d, dict) else type(d).__name__
            raise UserError(f"reward configuration: unknown field(s) {got}; expected some of {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, spec=None) -> "RewardConfig":
        """Check everything that can be checked without loading the model; returns the config with the checkpoint's
        spec fingerprint. `spec`: the ObjectiveSpec the prompts are conditioned on (--moslim.spec), if any."""
        from moslim_plugin.core.spec import ObjectiveSpec

        meta = read_checkpoint_meta(self.rm_path)
        rm_spec = ObjectiveSpec.from_dict(meta["spec"], source=f"{self.rm_path}/config.json")
        if spec is not None:
            spec.check_same(rm_spec, f"--moslim.spec vs the reward model {self.rm_path}")
        positions = meta.get("max_position_embeddings")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 8:
            raise UserError(f"--moslim.max_length {self.max_length!r}: expected an integer >= 8 (reward-model tokens)")
        if positions and self.max_length > positions:
            raise UserError(
                f"--moslim.max_length {self.max_length} exceeds what the reward model {self.rm_path} can read "
                f"(max_position_embeddings {positions})"
            )
        checks = [
            (self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1), "batch_size",
             "an integer >= 1"),
            (isinstance(self.fallback_reward, (int, float)) and math.isfinite(self.fallback_reward),
             "fallback_reward", "a finite number"),
            (isinstance(self.max_error_share, (int, float)) and 0 <= self.max_error_share < 1, "max_error_share",
             "a number in [0, 1)"),
            (isinstance(self.error_window, int) and self.error_window >= 1, "error_window", "an integer >= 1"),
            (self.dtype in (None, *DTYPES), "dtype", f"one of {list(DTYPES)}"),
        ]  # fmt: skip
        for ok, name, expected in checks:
            if not ok:
                raise UserError(f"--moslim.{name} {getattr(self, name)!r}: expected {expected}")
        try:
            resolve_template(self.template)
        except (ValueError, json.JSONDecodeError) as e:
            raise UserError(f"--moslim.template {self.template!r}: {e}") from None
        check_mapping(self.mapping, self.mapping_kwargs, rm_spec, meta.get("stats"))
        return dataclasses.replace(self, spec_fingerprint=rm_spec.fingerprint)

    def env_vars(self) -> dict:
        """What the launcher puts into the Ray job's runtime env for the `.py` reward function."""
        return {ENV_VAR: json.dumps(self.to_dict(), sort_keys=True)}

    def check_server(self, url: str, health: dict) -> None:
        """Refuse a reward server whose configuration (its /health reply) differs from this one on a compared field."""
        theirs = health.get("reward_config") if isinstance(health, dict) else None
        if not isinstance(theirs, dict):
            raise UserError(
                f"--reward.remote_url {url}: the server's /health reports no MOSLIM reward configuration "
                f"({health!r:.200}): it is not a `moslim-openrlhf serve-reward` server, so the --moslim.* reward "
                "flags would do nothing"
            )
        ours = self.to_dict()
        diffs = [
            f"{name}: server {theirs.get(name)!r}, command line {ours[name]!r}"
            for name in self.COMPARED
            if ours[name] is not None and theirs.get(name) != ours[name]
        ]
        if diffs:
            raise UserError(
                f"--reward.remote_url {url}: the reward server runs another configuration than this command line "
                f"({'; '.join(diffs)}): restart it with the same --moslim.* flags, or change the command line"
            )


def add_flags(group) -> None:
    """The reward flags, spelled the same for `train_ppo_ray` and `serve-reward`."""
    d = RewardConfig()
    group.add_argument(
        "--moslim.mapping", default=d.mapping, help="classification -> reward mapping (name or module:fn)"
    )
    group.add_argument(
        "--moslim.mapping_kwargs", default="{}", help="JSON object of keyword arguments for the mapping"
    )
    group.add_argument(
        "--moslim.template",
        default=d.template,
        help="the policy's chat template, to split prompt and response text: auto, chatml, llama3 or a JSON object",
    )
    group.add_argument(
        "--moslim.max_length",
        type=int,
        default=d.max_length,
        help="reward-model tokens per sample; longer: question cut first, then the response's end",
    )
    group.add_argument(
        "--moslim.batch_size",
        type=int,
        default=d.batch_size,
        help="rows per reward-model call (default: 16 on cpu, 64 on cuda)",
    )
    group.add_argument(
        "--moslim.strict",
        action="store_true",
        help="remote paths: stop at the first sample that cannot be scored (in-process always does)",
    )
    group.add_argument(
        "--moslim.fallback_reward",
        type=float,
        default=d.fallback_reward,
        help="remote paths: reward of a sample that cannot be scored (counted in moslim/errors)",
    )
    group.add_argument(
        "--moslim.max_error_share",
        type=float,
        default=d.max_error_share,
        help="remote paths: stop when more than this share of the last --moslim.error_window samples "
        "could not be scored",
    )
    group.add_argument("--moslim.error_window", type=int, default=d.error_window)
    group.add_argument("--moslim.device", default=None, help="remote paths: default cuda if available, else cpu")
    group.add_argument("--moslim.dtype", default=None, choices=DTYPES, help="default: bf16 on cuda, fp32 on cpu")


def read_checkpoint_meta(rm_path) -> dict:
    """The checkpoint's `moslim` config entry plus its max_position_embeddings, read without loading weights."""
    config_file = Path(rm_path or "") / "config.json"
    if not rm_path or not config_file.is_file():
        raise UserError(f"MOSLIM reward model checkpoint not found: {rm_path!r} (a folder with config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{config_file}: not JSON ({e})") from None
    meta = config.get("moslim")
    if not isinstance(meta, dict) or "spec" not in meta:
        raise UserError(f"{rm_path} is not a MOSLIM reward model (its config.json has no 'moslim' entry)")
    return {**meta, "max_position_embeddings": config.get("max_position_embeddings")}


def check_mapping(mapping, mapping_kwargs, spec, stats_dict) -> None:
    """Score one synthetic batch through the real mapping with these keyword arguments and the checkpoint's
    statistics: per objective, a sample that hits its requested level (p = 0.9) and one that misses it (p = 0.1).
    Refused: a mapping that raises, returns the wrong shape or a non-finite value, or the same reward for both."""
    import torch

    from moslim_plugin.core.mappings import MappingStats, parse_mapping_kwargs, resolve_mapping

    where = f"--moslim.mapping {mapping!r} with --moslim.mapping_kwargs {json.dumps(mapping_kwargs)}"
    try:
        fn = resolve_mapping(mapping)
        kwargs = parse_mapping_kwargs(fn, mapping_kwargs)
        stats = MappingStats.from_dict(stats_dict) if stats_dict is not None else None
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    levels = torch.tensor(spec.levels)
    k, lmax = len(spec.levels), max(spec.levels)
    probs = torch.zeros(2 * k, k, lmax)
    for head, n in enumerate(spec.levels):
        probs[:, head, :n] = 1.0 / n
    targets = torch.full((2 * k, k), -1, dtype=torch.long)
    for head, n in enumerate(spec.levels):
        for row, p_hit in ((2 * head, 0.9), (2 * head + 1, 0.1)):
            probs[row, head, :n] = (1 - p_hit) / (n - 1)
            probs[row, head, n - 1] = p_hit
            targets[row, head] = n - 1
    try:
        rewards, terms = fn(probs, targets, levels, copy.deepcopy(stats), **kwargs)
    except Exception as e:  # any failure here would fail every sample of the run
        raise UserError(f"{where} fails on a synthetic batch: {type(e).__name__}: {e}") from None
    if not isinstance(rewards, torch.Tensor) or tuple(rewards.shape) != (2 * k,):
        got = getattr(rewards, "shape", type(rewards).__name__)
        raise UserError(f"{where} returned rewards of shape {got} for a batch of {2 * k}: expected ({2 * k},)")
    if not isinstance(terms, torch.Tensor) or tuple(terms.shape) != (2 * k, k):
        raise UserError(f"{where} returned terms of shape {getattr(terms, 'shape', None)}: expected ({2 * k}, {k})")
    if not torch.isfinite(rewards).all():
        raise UserError(f"{where} returned non-finite rewards {rewards.tolist()} on a synthetic batch")
    same = [spec.names[h] for h in range(k) if rewards[2 * h] == rewards[2 * h + 1]]
    if same:
        raise UserError(
            f"{where} gives the same reward to a response that hits the requested level (p=0.9) and one that misses "
            f"it (p=0.1) for {same}: training on it would learn nothing"
        )


def from_env(environ=os.environ) -> RewardConfig:
    """The `.py` reward function's configuration: the JSON the launcher put into the job's runtime env."""
    stale = [name for name in RETIRED_ENV_VARS if name in environ]
    if stale:
        raise UserError(
            f"{stale} are no longer read: the reward configuration comes only from the train_ppo_ray command line "
            f"(--reward.model_name_or_path, --moslim.*), which the launcher passes on as {ENV_VAR}; remove them"
        )
    if ENV_VAR not in environ:
        raise UserError(
            f"{ENV_VAR} is not set: start training with `moslim-openrlhf train_ppo_ray ... --reward.remote_url "
            f"<this file> --reward.model_name_or_path <MOSLIM RM>`, which validates the reward configuration and "
            f"puts it into the job's runtime env"
        )
    try:
        return RewardConfig.from_dict(json.loads(environ[ENV_VAR]))
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{ENV_VAR} is not a reward configuration ({e}): {environ[ENV_VAR][:200]!r}") from None
