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

import argparse
import copy
import dataclasses
import json
import os
from pathlib import Path

from moslim_plugin import Range, UserError, add_options, check_options, finite, option, option_fields, positive_int
from moslim_plugin.integration.templates import resolve_template

ENV_VAR = "MOSLIM_REWARD_CONFIG"
DTYPES = ("fp32", "bf16", "fp16")


def json_object(text: str) -> str:
    """argparse `type` of a JSON-object flag (--moslim.mapping_kwargs): the text, checked. Kept as text until
    `from_flags`: on the upstream diff's path OpenRLHF's `hierarchize` turns every dict of the args into a
    namespace."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return text


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Each `option` field is the flag --moslim.<name> of train_ppo_ray and serve-reward (`add_flags`), with its help,
    default and accepted values; `compared`: the fields that decide a sample's reward or the failure policy, which a
    reward server must share with the driver (`check_server`)."""

    rm_path: str | None = None  # the MOSLIM reward-model checkpoint folder (--reward.model_name_or_path)
    mapping: str = option("moslim", "classification -> reward mapping (name or module:fn)", compared=True)
    mapping_kwargs: dict = option({}, "JSON object of keyword arguments for the mapping", json_object, compared=True)
    template: str = option(
        "auto", "the policy's chat template, to split prompt and response text: auto, chatml, llama3 or a JSON object",
        compared=True,
    )  # fmt: skip
    max_length: int = option(
        512, "reward-model tokens per sample, at most the backbone's position limit; longer: question cut first, "
        "then the response's end", Range(int, 8), compared=True,
    )  # fmt: skip
    batch_size: int | None = option(None, "rows per reward-model call (default: 16 on cpu, 64 on cuda)", positive_int)
    strict: bool = option(
        False, "remote paths: stop at the first sample that cannot be scored (in-process always does)", compared=True
    )
    fallback_reward: float = option(
        0.0, "remote paths: reward of a sample that cannot be scored (counted in moslim/errors)", finite,
        compared=True, remote_only=True,
    )  # fmt: skip
    max_error_share: float = option(
        0.1, "remote paths: stop when more than this share of the last --moslim.error_window samples could not be "
        "scored", Range(float, 0, 1, high_open=True), compared=True, remote_only=True,
    )  # fmt: skip
    error_window: int = option(
        64, "remote paths: the samples --moslim.max_error_share counts over", positive_int, compared=True,
        remote_only=True,
    )  # fmt: skip
    device: str | None = option(None, "the reward model's torch device (default: cuda if available, else cpu)")
    dtype: str | None = option(None, "the reward model's dtype (default: bf16 on cuda, fp32 on cpu)", choices=DTYPES)
    spec_fingerprint: str | None = dataclasses.field(default=None, metadata={"compared": True})  # set by validate()

    @classmethod
    def compared(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("compared"))

    @classmethod
    def from_flags(cls, flags, rm_path) -> "RewardConfig":
        """From the parsed `add_flags` flags (attributes without the `moslim.` prefix; the JSON text parsed here)."""
        values = {f.name: getattr(flags, f.name) for f in option_fields(cls)}
        return cls(rm_path=rm_path, **{**values, "mapping_kwargs": json.loads(values["mapping_kwargs"])})

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
        from moslim_plugin.core.rm import max_positions
        from moslim_plugin.core.spec import ObjectiveSpec

        check_options(self, "moslim")  # a value given in Python or read back from JSON, checked as its flag is
        meta = read_checkpoint_meta(self.rm_path)
        rm_spec = ObjectiveSpec.from_dict(meta["spec"], source=meta["source"])
        if spec is not None:
            spec.check_same(rm_spec, f"--moslim.spec vs the reward model {self.rm_path}")
        positions = max_positions(self.rm_path)
        if positions and self.max_length > positions:
            raise UserError(
                f"--moslim.max_length {self.max_length} exceeds what the reward model {self.rm_path} can read (its "
                f"backbone's max_position_embeddings {positions}): pass at most {positions}"
            )
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                raise UserError(
                    f"--moslim.device {self.device!r}: not a torch device; expected e.g. cpu, cuda or cuda:1"
                ) from None
        try:
            resolve_template(self.template)
        except (ValueError, json.JSONDecodeError) as e:
            raise UserError(f"--moslim.template {self.template!r}: {e}") from None
        check_rules(rm_spec)
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
            for name in self.compared()
            if ours[name] is not None and theirs.get(name) != ours[name]
        ]
        if diffs:
            raise UserError(
                f"--reward.remote_url {url}: the reward server runs another configuration than this command line "
                f"({'; '.join(diffs)}): restart it with the same --moslim.* flags, or change the command line"
            )


def add_flags(group) -> None:
    """The reward flags, spelled the same for `train_ppo_ray` and `serve-reward`: RewardConfig's options."""
    add_options(group, RewardConfig, "moslim")


def read_checkpoint_meta(rm_path) -> dict:
    """The checkpoint's `moslim` config entry and the spec's `source`, read without loading weights. A spec file of
    rules only (the reward needs no model) gives its spec and no statistics."""
    from moslim_plugin.core.rm import saved_spec
    from moslim_plugin.core.spec import is_spec_file

    if rm_path and is_spec_file(rm_path):
        return {"spec": saved_spec(rm_path).to_dict(), "stats": None, "source": str(rm_path)}
    config_file = Path(rm_path or "") / "config.json"
    if not rm_path or not config_file.is_file():
        raise UserError(f"MOSLIM reward model checkpoint not found: {rm_path!r} (a folder with config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file}: not JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    meta = config.get("moslim")
    if not isinstance(meta, dict) or "spec" not in meta:
        raise UserError(f"{rm_path} is not a MOSLIM reward model (its config.json has no 'moslim' entry)")
    return {**meta, "source": str(config_file)}


# The least reward a response that hits its requested level (p = 0.9) must get over one that misses it (p = 0.1), per
# objective, on the synthetic batch (docs/mappings.md). Below it, the reward's signal drowns in the KL penalty and
# numerical noise: `{"eps": 1e9}` passes every finiteness check and still trains nothing. The built-ins give 0.025 or
# more with their defaults (expected_level, k="all", 32 binary objectives: 0.8 / 32).
MIN_REWARD_GAP = 1e-3


# Plain (question, response) pairs every rule is run on before Ray starts: a short answer, a list, a long answer.
RULE_PROBES = (
    ("What is 2+2?", "4."),
    ("Name three fruits.", "Three fruits:\n- apples\n- pears\n- plums"),
    ("Why does it rain?", "Warm air rises and cools. " * 8 + "The droplets then fall as rain!"),
)


def check_rules(spec) -> None:
    """Run every rule objective on `RULE_PROBES`: a rule that raises or returns no valid level would fail every
    sample of the run, so it stops the launch here, naming the objective."""
    for objective in spec.objectives:
        if objective.rule is None:
            continue
        for question, response in RULE_PROBES:
            try:
                objective.level(question, response)
            except Exception as e:  # user code: whatever it raises would fail the run
                raise UserError(
                    f"rule objective {objective.name!r} ({objective.rule}) fails on the plain response "
                    f"{response[:40]!r}...: {type(e).__name__}: {' '.join(str(e).split())}"
                ) from None


def check_mapping(mapping, mapping_kwargs, spec, stats_dict) -> None:
    """Score one synthetic batch through the real mapping with these keyword arguments and the checkpoint's
    statistics, as the Scorer hands them over: per objective, a sample that hits its requested level (p = 0.9; a rule
    objective's one-hot, exact) and one that misses it (p = 0.1; a rule's one-hot at level 0). Refused: a mapping that
    raises, returns the wrong shape or a non-finite value, or gives the hit less than MIN_REWARD_GAP more reward than
    the miss (naming the keyword that does it, when one does)."""
    from moslim_plugin.core.mappings import MappingStats, parse_mapping_kwargs, resolve_mapping
    from moslim_plugin.core.scorer import spec_stats

    where = f"--moslim.mapping {mapping!r} with --moslim.mapping_kwargs {json.dumps(mapping_kwargs)}"
    try:
        fn = resolve_mapping(mapping)
        kwargs = parse_mapping_kwargs(fn, mapping_kwargs)
        stats = spec_stats(spec, MappingStats.from_dict(stats_dict) if stats_dict is not None else None)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    gaps = synthetic_gaps(fn, kwargs, spec, stats, where)
    low = {name: gap for name, gap in zip(spec.names, gaps) if not gap >= MIN_REWARD_GAP}
    if not low:
        return

    # The keywords whose default alone restores the gap are the ones to change.
    def fine_without(key) -> bool:
        others = {k: v for k, v in kwargs.items() if k != key}
        try:
            return min(synthetic_gaps(fn, others, spec, stats, where)) >= MIN_REWARD_GAP
        except UserError:
            return False

    culprits = [key for key in kwargs if fine_without(key)]
    gaps_text = ", ".join(f"{name} {gap:+.3g}" for name, gap in low.items())
    raise UserError(
        f"{where}: a response that hits the requested level (p=0.9) gets {gaps_text} reward over one that misses it "
        f"(p=0.1), less than the floor of {MIN_REWARD_GAP} (docs/mappings.md): training on it would learn nothing, "
        "or the opposite" + (f"; the keyword(s) {culprits} cause it: change or remove them" if culprits else "")
    )


def synthetic_gaps(fn, kwargs, spec, stats, where) -> list[float]:
    """Per objective, the reward of a synthetic response that hits its requested level (p = 0.9) minus that of one
    that misses it (p = 0.1); the batch's output is checked on the way (shape, finite)."""
    import torch

    levels = torch.tensor(spec.levels)
    k, lmax = len(spec.levels), max(spec.levels)
    probs = torch.zeros(2 * k, k, lmax)
    for head, n in enumerate(spec.levels):
        probs[:, head, :n] = 1.0 / n
    targets = torch.full((2 * k, k), -1, dtype=torch.long)
    for head, objective in enumerate(spec.objectives):
        n = objective.levels
        for row, p_hit in ((2 * head, 0.9), (2 * head + 1, 0.1)):
            probs[row, head, :n] = (1 - p_hit) / (n - 1)
            probs[row, head, n - 1] = p_hit
            if objective.rule is not None:  # exact: one-hot on the target, or on level 0
                probs[row, head, :n] = torch.nn.functional.one_hot(torch.tensor(n - 1 if p_hit > 0.5 else 0), n)
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
    return (rewards[0::2] - rewards[1::2]).tolist()


def from_env(environ=None) -> RewardConfig:
    """The `.py` reward function's configuration: the JSON the launcher put into the job's runtime env. The process's
    environment is read when called (not bound at import: libraries replace the os.environ object, e.g. under
    OpenRLHF's reward-model trainer)."""
    environ = os.environ if environ is None else environ
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
