"""Mapping functions: the reward model's per-head class probabilities + the requested levels -> one scalar reward.

Every mapping has the signature ``fn(probs, targets, levels, stats, **kwargs) -> (rewards[B], terms[B, K])``:
``probs`` float [B, K, Lmax] (classes past a head's ``levels`` are 0), ``targets`` long [B, K] with -1 where the
objective is not requested, ``levels`` long [K], ``stats`` a `MappingStats` or None. ``terms`` holds each
objective's contribution (0 where not requested); ``rewards`` combines them. All built-ins are vectorised over the
batch, compute in fp32, are deterministic and finite for every valid input; a row that requests nothing gets 0.

Built-ins (keyword arguments come from ``--moslim.mapping_kwargs`` JSON):

- ``moslim`` (the paper): ``r = 1/k * sum_i mask_i * (p_i[t_i] - avg_i) / max(std_i, eps)`` with ``norm``:
  ``"sample"``: avg/std of the head's own probability vector (population std over its ``levels_i`` classes);
  ``"dataset"``: avg/std of p_i[t_i] over a calibration set, stored in the checkpoint (`MappingStats.from_probs`);
  ``"running"``: like dataset, but ``stats`` is updated in place with every batch before it is scored (exact
  cumulative mean/variance, Chan et al.'s parallel merge, as OpenRLHF's RunningMoments; deterministic for a given
  batch order; not thread-safe, so callers serialise calls sharing one MappingStats); ``"auto"`` (default): dataset
  when ``stats`` is given, else sample.
  ``k``: ``"requested"`` (default; the number of objectives the row requests) or ``"all"`` (K). ``eps`` = 1e-3.
- ``expected_level``: ``-|E[level_i] - t_i| / (levels_i - 1)``, in [-1, 0], 0 when the expected level hits the target.
- ``target_logprob``: ``log max(p_i[t_i], min_prob)`` (``min_prob`` = 1e-6 keeps one-hot misses finite).
Both also take ``k``.

Why ``norm="auto"``: per-sample statistics need no calibration, so a fresh checkpoint trains out of the box; when
the checkpoint carries calibration statistics, they are the paper's normalisation (how much more this response hits
level t than typical responses do), keep the confidence that per-sample z-scores drop (a binary head's per-sample
term is +-1 whatever the margin) and make objectives with different class balance comparable, so they are used.
Which one was used is visible from the checkpoint's config (``moslim.stats``); pass ``norm`` to pin it.
Why ``k="requested"``: a row that asks for one objective gets the same reward scale as one that asks for three.
Why ``eps`` = 1e-3 and a floor rather than ``+ eps``: the formula is exact whenever the spread is meaningful, and a
(near-)uniform head or a class that never varies in calibration cannot blow the reward up past ~1e3 x the gap.
More, with the limits of each property: docs/mappings.md.
"""

import importlib
import inspect
import json
import math
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch

from moslim_plugin import UserError

ENTRY_POINT_GROUP = "moslim_plugin.mappings"
DEFAULT_MAPPING = "moslim"
NORMS = ("auto", "sample", "dataset", "running")
K_MODES = ("requested", "all")


@dataclass
class MappingStats:
    """Per head i and level t: mean, std and count of p_i[t] over the samples seen (float64, [K, Lmax])."""

    levels: tuple[int, ...]
    mean: torch.Tensor
    std: torch.Tensor
    count: torch.Tensor

    @classmethod
    def empty(cls, levels) -> "MappingStats":
        levels = tuple(int(x) for x in levels)
        zeros = torch.zeros(len(levels), max(levels), dtype=torch.float64)
        return cls(levels, zeros.clone(), zeros.clone(), zeros.clone())

    @classmethod
    def from_probs(cls, probs: torch.Tensor, levels) -> "MappingStats":
        """Calibration statistics of a [N, K, Lmax] probability tensor (e.g. the RM on held-out responses)."""
        stats = cls.empty(levels)
        stats.update(probs)
        return stats

    def update(self, probs: torch.Tensor) -> None:
        """Merge a batch [B, K, Lmax] into the statistics in place (exact, order-deterministic)."""
        _check_probs_shape(probs, self.levels)
        if probs.shape[0] == 0:
            return
        batch = probs.detach().to(device=self.mean.device, dtype=torch.float64)
        n, valid = batch.shape[0], _valid_classes(torch.tensor(self.levels), batch.shape[-1])
        b_mean, b_var = batch.mean(0), batch.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.std**2 * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean = torch.where(valid, self.mean + delta * n / total, 0.0)
        self.std = torch.where(valid, (m2 / total).sqrt(), 0.0)
        self.count = torch.where(valid, total, 0.0)

    def to_dict(self) -> dict:
        """Ragged per-head lists (no padding) for the checkpoint's config.json."""
        return {
            "levels": list(self.levels),
            **{key: [t[i, :n].tolist() for i, n in enumerate(self.levels)] for key, t in self._tensors().items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MappingStats":
        if not isinstance(d, dict) or set(d) != {"levels", "mean", "std", "count"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"mapping stats must have keys ['count', 'levels', 'mean', 'std'], got {got}")
        levels = d["levels"]
        if not isinstance(levels, list) or not levels or not all(isinstance(n, int) and n >= 2 for n in levels):
            raise ValueError(f"mapping stats 'levels': expected a list of integers >= 2, got {levels!r}")
        stats = cls.empty(levels)
        for key, tensor in stats._tensors().items():
            rows = d[key]
            if not isinstance(rows, list) or [len(r) if isinstance(r, list) else None for r in rows] != levels:
                raise ValueError(
                    f"mapping stats {key!r}: expected one list per head, of lengths {levels}, got {rows!r:.120}"
                )
            for i, row in enumerate(rows):
                if not all(
                    isinstance(x, (int, float)) and math.isfinite(x) and (key == "mean" or x >= 0) for x in row
                ):
                    raise ValueError(
                        f"mapping stats {key!r}[{i}]: expected finite numbers (>= 0 for std/count), got {row}"
                    )
                tensor[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        return stats

    def _tensors(self) -> dict:
        return {"mean": self.mean, "std": self.std, "count": self.count}


def _valid_classes(levels: torch.Tensor, lmax: int) -> torch.Tensor:
    return torch.arange(lmax, device=levels.device)[None, :] < levels[:, None]


def _check_probs_shape(probs, levels) -> None:
    if not isinstance(probs, torch.Tensor) or probs.dim() != 3 or not probs.is_floating_point():
        raise ValueError(f"probs must be a float tensor [B, K, Lmax], got {getattr(probs, 'shape', type(probs))}")
    if probs.shape[1] != len(levels) or probs.shape[2] < max(levels):
        need = f"[B, {len(levels)}, >= {max(levels)}]"
        raise ValueError(f"probs shape {tuple(probs.shape)} does not fit levels {list(levels)}: need {need}")


def _check_inputs(probs, targets, levels):
    """Shared validation of every built-in's inputs; returns (probs fp32, targets, levels, requested mask)."""
    levels = torch.as_tensor(levels, device=probs.device if isinstance(probs, torch.Tensor) else None)
    if levels.dim() != 1 or levels.dtype.is_floating_point or (levels < 2).any():
        raise ValueError(f"levels must be a 1-D integer tensor of values >= 2, got {levels.tolist()}")
    _check_probs_shape(probs, levels.tolist())
    if not isinstance(targets, torch.Tensor) or targets.shape != probs.shape[:2] or targets.is_floating_point():
        got = getattr(targets, "shape", type(targets))
        raise ValueError(
            f"targets must be an integer tensor [B, K] = {list(probs.shape[:2])} (-1 = not requested), got {got}"
        )
    bad = (targets < -1) | (targets >= levels[None, :])
    if bad.any():
        b, i = bad.nonzero()[0].tolist()
        raise ValueError(
            f"targets[{b}, {i}] = {targets[b, i].item()} is out of range: expected -1 (not requested) "
            f"or 0..{levels[i].item() - 1}"
        )
    probs = probs.float()
    # One pass: NaN fails both comparisons, so this also refuses NaN and inf (1e-4 slack for softmax rounding).
    if not ((probs >= 0) & (probs <= 1 + 1e-4)).all():
        raise ValueError("probs must be finite probabilities in [0, 1] (got NaN, inf or values outside [0, 1])")
    return probs, targets.long(), levels.long(), targets >= 0


def _check_choice(name, value, choices) -> None:
    if value not in choices:
        raise UserError(f"mapping keyword {name!r} must be one of {list(choices)}, got {value!r}")


def _check_positive(name, value, upper=math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < upper:
        raise UserError(f"mapping keyword {name!r} must be a number in (0, {upper}), got {value!r}")


def _combine(terms: torch.Tensor, requested: torch.Tensor, k: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the unrequested terms and average; a row that requests nothing gets reward 0 (k clamped to 1)."""
    terms = torch.where(requested, terms, torch.zeros_like(terms))
    denom = requested.sum(-1).clamp_min(1) if k == "requested" else torch.full_like(terms[:, 0], terms.shape[1])
    return (terms.sum(-1) / denom).float(), terms.float()


def _target_probs(probs, targets):
    return probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def moslim(probs, targets, levels, stats, *, norm: str = "auto", k: str = "requested", eps: float = 1e-3):
    _check_choice("norm", norm, NORMS)
    _check_choice("k", k, K_MODES)
    _check_positive("eps", eps)
    probs, targets, levels, requested = _check_inputs(probs, targets, levels)
    if norm == "auto":
        norm = "sample" if stats is None else "dataset"
    p_target = _target_probs(probs, targets)
    if norm == "sample":
        valid = _valid_classes(levels, probs.shape[-1])
        avg = (probs * valid).sum(-1) / levels
        std = ((((probs - avg.unsqueeze(-1)) * valid) ** 2).sum(-1) / levels).sqrt()
    else:
        if not isinstance(stats, MappingStats):
            raise ValueError(
                f"norm={norm!r} needs a MappingStats, got {type(stats).__name__}: compute calibration statistics with "
                "MappingStats.from_probs (or start running ones with MappingStats.empty(levels)), or use norm='sample'"
            )
        if list(stats.levels) != levels.tolist():
            raise ValueError(
                f"mapping stats are for levels {list(stats.levels)}, but the heads have {levels.tolist()}"
            )
        if norm == "running":
            stats.update(probs)
        head = torch.arange(len(levels), device=probs.device).expand_as(targets)
        count = stats.count.to(probs.device)[head, targets.clamp_min(0)]
        if (requested & (count == 0)).any():
            raise ValueError("mapping stats have no samples for a requested (head, level): calibrate on more data")
        avg = stats.mean.to(probs.device, torch.float32)[head, targets.clamp_min(0)]
        std = stats.std.to(probs.device, torch.float32)[head, targets.clamp_min(0)]
    return _combine((p_target - avg) / std.clamp_min(eps), requested, k)


def expected_level(probs, targets, levels, stats, *, k: str = "requested"):
    _check_choice("k", k, K_MODES)
    probs, targets, levels, requested = _check_inputs(probs, targets, levels)
    expected = (probs * torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype)).sum(-1)
    return _combine(-(expected - targets).abs() / (levels - 1), requested, k)


def target_logprob(probs, targets, levels, stats, *, k: str = "requested", min_prob: float = 1e-6):
    _check_choice("k", k, K_MODES)
    _check_positive("min_prob", min_prob, upper=1)
    probs, targets, levels, requested = _check_inputs(probs, targets, levels)
    return _combine(_target_probs(probs, targets).clamp_min(min_prob).log(), requested, k)


BUILTIN_MAPPINGS = {"moslim": moslim, "expected_level": expected_level, "target_logprob": target_logprob}


def _installed() -> str:
    plugins = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return f"built-in: {sorted(BUILTIN_MAPPINGS)}; entry points ({ENTRY_POINT_GROUP}): {plugins}; or 'module:function'"


def resolve_mapping(name):
    """A mapping by built-in name, entry-point name (group `moslim_plugin.mappings`) or `module:function`."""
    if callable(name):
        fn, what = name, repr(name)
    elif not isinstance(name, str) or not name:
        raise UserError(f"mapping must be a name or a callable, got {name!r}; installed: {_installed()}")
    elif name in BUILTIN_MAPPINGS:
        fn, what = BUILTIN_MAPPINGS[name], name
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if found:
            fn, what = found[0].load(), f"entry point {found[0].value!r}"
        elif ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                raise UserError(f"mapping {name!r}: cannot import module {module_name!r} ({e})") from None
            if not hasattr(module, attr):
                raise UserError(f"mapping {name!r}: module {module_name!r} has no attribute {attr!r}")
            fn, what = getattr(module, attr), name
        else:
            raise UserError(f"unknown mapping {name!r}; installed: {_installed()}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise UserError(f"mapping {what}: cannot read its signature ({e})") from None
    try:
        signature.bind(None, None, None, None)
    except TypeError:
        raise UserError(
            f"mapping {what} must accept (probs, targets, levels, stats, **kwargs) positionally; its signature is "
            f"{signature}"
        ) from None
    return fn


def parse_mapping_kwargs(fn, kwargs) -> dict:
    """Check config keyword arguments (dict, JSON string or None) against the mapping's keyword parameters."""
    if kwargs is None or kwargs == "":
        return {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as e:
            raise UserError(f"mapping kwargs must be a JSON object, got {kwargs!r} ({e})") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"mapping kwargs must be a JSON object, got {kwargs!r}")
    params = list(inspect.signature(fn).parameters.values())[4:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"mapping {getattr(fn, '__name__', fn)!r} has no keyword(s) {unknown}; it accepts {accepted}")
    return dict(kwargs)
