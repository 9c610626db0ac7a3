import json
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moslim_plugin.core.mappings import (
    BUILTIN_MAPPINGS,
    DEFAULT_MAPPING,
    MappingStats,
    expected_level,
    moslim,
    parse_mapping_kwargs,
    resolve_mapping,
    target_logprob,
)

LEVELS = torch.tensor([5, 3, 2])
# Every built-in configuration that reads only (probs, targets, levels, stats): running mode is tested on its own.
CONFIGS = [
    ("moslim", {"norm": "sample"}),
    ("moslim", {"norm": "sample", "k": "all"}),
    ("moslim", {"norm": "dataset"}),
    ("moslim", {"norm": "dataset", "k": "all", "eps": 0.1}),
    ("expected_level", {}),
    ("expected_level", {"k": "all"}),
    ("target_logprob", {}),
    ("target_logprob", {"min_prob": 1e-3}),
]
CONFIG_IDS = [f"{name}-{json.dumps(kw)}" for name, kw in CONFIGS]


def random_probs(batch, levels=LEVELS, generator=None, kind="random"):
    """[B, K, Lmax] with zeros past each head's levels; kind = random | one_hot | uniform."""
    lmax = int(levels.max())
    valid = torch.arange(lmax)[None, :] < levels[:, None]
    if kind == "one_hot":
        idx = (torch.rand(batch, len(levels), generator=generator) * levels).long()
        return torch.nn.functional.one_hot(idx, lmax).float()
    logits = torch.randn(batch, len(levels), lmax, generator=generator) * 3 if kind == "random" else torch.zeros(1)
    logits = logits.expand(batch, len(levels), lmax).masked_fill(~valid, -1e4)
    return torch.softmax(logits, -1)


def random_targets(batch, levels=LEVELS, generator=None, p_request=0.7):
    targets = (torch.rand(batch, len(levels), generator=generator) * levels).long()
    return targets.masked_fill(torch.rand(batch, len(levels), generator=generator) > p_request, -1)


def calibration(seed=0):
    return MappingStats.from_probs(random_probs(64, generator=torch.Generator().manual_seed(seed)), LEVELS)


def run(name, kwargs, probs, targets, stats=None):
    fn = resolve_mapping(name)
    needs_stats = kwargs.get("norm") in ("dataset", "running")
    return fn(probs, targets, LEVELS, stats if stats is not None or not needs_stats else calibration(), **kwargs)


def reference(name, kwargs, probs, targets, levels, stats):
    """The formulas of the module docstring, one sample and one objective at a time, in float64 Python."""
    rewards = []
    for b in range(probs.shape[0]):
        terms = []
        for i, n in enumerate(levels.tolist()):
            t = int(targets[b, i])
            if t < 0:
                continue
            p = [float(x) for x in probs[b, i, :n]]
            if name == "moslim":
                if kwargs.get("norm") == "sample":
                    avg = sum(p) / n
                    std = math.sqrt(sum((x - avg) ** 2 for x in p) / n)
                else:
                    avg, std = float(stats.mean[i, t]), float(stats.std[i, t])
                terms.append((p[t] - avg) / max(std, kwargs.get("eps", 1e-3)))
            elif name == "expected_level":
                terms.append(-abs(sum(j * x for j, x in enumerate(p)) - t) / (n - 1))
            else:
                terms.append(math.log(max(p[t], kwargs.get("min_prob", 1e-6))))
        k = len(levels) if kwargs.get("k") == "all" else max(len(terms), 1)
        rewards.append(sum(terms) / k)
    return torch.tensor(rewards)


@pytest.mark.unit
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_vectorised_mapping_equals_slow_reference_loop(name, kwargs):
    g = torch.Generator().manual_seed(1)
    probs = torch.cat([random_probs(40, generator=g), random_probs(8, kind="one_hot", generator=g),
                       random_probs(4, kind="uniform")])  # fmt: skip
    targets = random_targets(52, generator=g)
    stats = calibration()
    rewards, terms = run(name, kwargs, probs, targets, stats)
    assert rewards.dtype == torch.float32 and terms.dtype == torch.float32
    assert rewards.shape == (52,) and terms.shape == (52, 3)
    expected = reference(name, kwargs, probs, targets, LEVELS, stats)
    torch.testing.assert_close(rewards, expected.float(), rtol=1e-4, atol=1e-4)
    assert (terms[targets < 0] == 0).all()


@pytest.mark.unit
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_reward_rises_when_probability_mass_moves_to_the_target_level(name, kwargs):
    # Mass moves from all other levels proportionally: p -> (1 - lam) p + lam * onehot(target). Moving it out of ONE
    # chosen level can lower per-sample z-scores and the expected-level reward (see docs/mappings.md).
    g = torch.Generator().manual_seed(2)
    probs, targets = random_probs(32, generator=g), random_targets(32, generator=g, p_request=1.0)
    onehot = torch.nn.functional.one_hot(targets, probs.shape[-1]).float()
    stats = calibration()
    rewards = [run(name, kwargs, (1 - lam) * probs + lam * onehot, targets, stats)[0] for lam in (0.0, 0.3, 0.6, 1.0)]
    for lower, higher in zip(rewards, rewards[1:]):
        assert (higher > lower).all(), (lower, higher)


@pytest.mark.unit
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_reward_ignores_unrequested_objectives(name, kwargs):
    g = torch.Generator().manual_seed(3)
    probs, targets = random_probs(32, generator=g), random_targets(32, generator=g)
    other = random_probs(32, generator=g)
    mixed = torch.where((targets < 0)[..., None], other, probs)  # only unrequested heads change
    stats = calibration()
    a, b = run(name, kwargs, probs, targets, stats), run(name, kwargs, mixed, targets, stats)
    assert not torch.equal(probs, mixed)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.unit
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_row_without_requests_gets_zero_reward(name, kwargs):
    probs = random_probs(4, generator=torch.Generator().manual_seed(4))
    rewards, terms = run(name, kwargs, probs, torch.full((4, 3), -1))
    assert torch.equal(rewards, torch.zeros(4)) and torch.equal(terms, torch.zeros(4, 3))


@pytest.mark.unit
@pytest.mark.parametrize("name, kwargs", CONFIGS + [("moslim", {"norm": "running"})], ids=CONFIG_IDS + ["running"])
def test_empty_batch_and_bf16_probs_give_fp32_rewards(name, kwargs):
    stats = MappingStats.empty(LEVELS) if kwargs.get("norm") == "running" else calibration()
    rewards, terms = run(name, kwargs, torch.zeros(0, 3, 5), torch.zeros(0, 3, dtype=torch.long), stats)
    assert rewards.shape == (0,) and terms.shape == (0, 3)
    probs, targets = random_probs(4).bfloat16(), random_targets(4, generator=torch.Generator().manual_seed(10))
    rewards, terms = run(name, kwargs, probs, targets, stats)
    assert rewards.dtype == terms.dtype == torch.float32 and torch.isfinite(rewards).all()


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["random", "one_hot", "uniform"]),
    st.sampled_from(range(len(CONFIGS))),
    st.sampled_from([0.0, 1e-12, 0.3]),
)
def test_mapping_is_finite_for_random_one_hot_and_uniform_probs(seed, kind, config, stats_std):
    name, kwargs = CONFIGS[config]
    g = torch.Generator().manual_seed(seed)
    probs, targets = random_probs(16, kind=kind, generator=g), random_targets(16, generator=g)
    stats = calibration(seed)
    stats.std.fill_(stats_std)  # degenerate calibration: a class that never varied
    rewards, terms = run(name, kwargs, probs, targets, stats)
    assert torch.isfinite(rewards).all() and torch.isfinite(terms).all()


@pytest.mark.unit
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_mapping_is_deterministic_and_rows_are_independent(name, kwargs):
    g = torch.Generator().manual_seed(5)
    probs, targets = random_probs(16, generator=g), random_targets(16, generator=g)
    first, second = run(name, kwargs, probs, targets), run(name, kwargs, probs, targets)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    alone = torch.cat([run(name, kwargs, probs[i : i + 1], targets[i : i + 1])[0] for i in range(16)])
    torch.testing.assert_close(first[0], alone, rtol=1e-6, atol=1e-7)


@pytest.mark.unit
def test_best_possible_response_gets_the_known_maximum():
    targets = torch.tensor([[4, 0, 1]])
    onehot = torch.nn.functional.one_hot(targets, 5).float()
    # Per-sample z-score of a one-hot: (1 - 1/L) / sqrt((1/L)(1 - 1/L)) = sqrt(L - 1).
    expected = (math.sqrt(4) + math.sqrt(2) + math.sqrt(1)) / 3
    assert moslim(onehot, targets, LEVELS, None)[0].item() == pytest.approx(expected, rel=1e-6)
    assert expected_level(onehot, targets, LEVELS, None)[0].item() == 0.0
    assert target_logprob(onehot, targets, LEVELS, None)[0].item() == 0.0


@pytest.mark.unit
def test_auto_norm_uses_dataset_stats_when_given_else_per_sample():
    g = torch.Generator().manual_seed(6)
    probs, targets = random_probs(8, generator=g), random_targets(8, generator=g)
    stats = calibration()
    assert torch.equal(moslim(probs, targets, LEVELS, None)[0], moslim(probs, targets, LEVELS, None, norm="sample")[0])
    auto, dataset = moslim(probs, targets, LEVELS, stats)[0], moslim(probs, targets, LEVELS, stats, norm="dataset")[0]
    assert torch.equal(auto, dataset)
    assert not torch.equal(auto, moslim(probs, targets, LEVELS, stats, norm="sample")[0])


@pytest.mark.unit
def test_k_all_divides_by_every_objective_and_k_requested_by_the_requested_ones():
    g = torch.Generator().manual_seed(7)
    probs = random_probs(8, generator=g)
    targets = torch.tensor([[1, -1, -1]] * 8)
    requested, every = moslim(probs, targets, LEVELS, None)[0], moslim(probs, targets, LEVELS, None, k="all")[0]
    torch.testing.assert_close(every, requested / 3)


@pytest.mark.unit
def test_stats_from_probs_are_per_head_per_level_mean_and_std():
    probs = random_probs(50, generator=torch.Generator().manual_seed(8))
    stats = MappingStats.from_probs(probs, LEVELS)
    torch.testing.assert_close(stats.mean[0], probs[:, 0].double().mean(0))
    torch.testing.assert_close(stats.std[1, :3], probs[:, 1, :3].double().std(0, unbiased=False))
    assert stats.count[2].tolist() == [50, 50, 0, 0, 0] and stats.mean[2, 2:].abs().sum() == 0


@pytest.mark.unit
def test_running_stats_equal_calibration_on_everything_seen_and_score_after_update():
    g = torch.Generator().manual_seed(9)
    batches = [random_probs(n, generator=g) for n in (1, 7, 16)]
    targets = [random_targets(len(b), generator=g) for b in batches]
    running = MappingStats.empty(LEVELS)
    for probs, tgt in zip(batches, targets):
        rewards, _ = moslim(probs, tgt, LEVELS, running, norm="running")
        assert torch.isfinite(rewards).all()
    whole = MappingStats.from_probs(torch.cat(batches), LEVELS)
    for key in ("mean", "std", "count"):
        torch.testing.assert_close(getattr(running, key), getattr(whole, key))
    # The last batch was scored with the statistics that already included it.
    torch.testing.assert_close(rewards, moslim(batches[-1], targets[-1], LEVELS, whole, norm="dataset")[0])


@pytest.mark.unit
def test_stats_round_trip_through_json():
    stats = calibration()
    again = MappingStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again.levels == (5, 3, 2) and len(stats.to_dict()["mean"][2]) == 2
    for key in ("mean", "std", "count"):
        assert torch.equal(getattr(again, key), getattr(stats, key))


@pytest.mark.unit
@pytest.mark.parametrize(
    "d, pattern",
    [
        ({"levels": [2], "mean": [[0, 0]]}, r"must have keys \['count', 'levels', 'mean', 'std'\]"),
        ({"levels": [1], "mean": [[0]], "std": [[0]], "count": [[1]]}, r"'levels': expected a list of integers >= 2"),
        ({"levels": [2], "mean": [[0]], "std": [[0, 0]], "count": [[1, 1]]}, r"'mean': expected one list per head"),
        ({"levels": [2], "mean": [[0, 0]], "std": [[-1, 0]], "count": [[1, 1]]}, r"'std'\[0\]: expected finite"),
        ({"levels": [2], "mean": [[0, float("nan")]], "std": [[0, 0]], "count": [[1, 1]]}, r"'mean'\[0\]"),
    ],
)
def test_bad_stats_dict_gives_precise_error(d, pattern):
    with pytest.raises(ValueError, match=pattern):
        MappingStats.from_dict(d)


@pytest.mark.unit
@pytest.mark.parametrize(
    "call, pattern",
    [
        (
            lambda p, t: moslim(p, t, LEVELS, None, norm="global"),
            r"'norm' must be one of \['auto', 's.*'global'",
        ),
        (lambda p, t: moslim(p, t, LEVELS, None, k="some"), r"'k' must be one of \['requested', 'all'\], got 'some'"),
        (lambda p, t: moslim(p, t, LEVELS, None, eps=0), r"'eps' must be a number in \(0, inf\), got 0"),
        (lambda p, t: target_logprob(p, t, LEVELS, None, min_prob=2), r"'min_prob' must be a number in \(0, 1\)"),
        (
            lambda p, t: moslim(p, t, LEVELS, None, norm="dataset"),
            r"norm='dataset' needs a MappingStats, got None",
        ),
        (lambda p, t: moslim(p, t, LEVELS, None, norm="running"), r"MappingStats.empty\(levels\)"),
        (lambda p, t: moslim(p, t, LEVELS, MappingStats.empty([5, 3, 3])), r"stats are for levels \[5, 3, 3\]"),
        (lambda p, t: moslim(p, t, LEVELS, MappingStats.empty(LEVELS)), r"no samples for a requested"),
        (lambda p, t: moslim(p[:, :2], t, LEVELS, None), r"probs shape \(2, 2, 5\) does not fit levels \[5, 3, 2\]"),
        (lambda p, t: moslim(p, t[:1], LEVELS, None), r"targets must be an integer tensor \[B, K\] = \[2, 3\]"),
        (lambda p, t: moslim(p, t.float(), LEVELS, None), r"targets must be an integer tensor"),
        (lambda p, t: moslim(p, t + 1, LEVELS, None), r"targets\[0, 2\] = 2 is out of range: expected -1.* or 0\.\.1"),
        (lambda p, t: moslim(p * float("nan"), t, LEVELS, None), r"probs must be finite probabilities"),
        (lambda p, t: expected_level(p * 3, t, LEVELS, None), r"probs must be finite probabilities in \[0, 1\]"),
        (lambda p, t: moslim(p, t, torch.tensor([5, 3, 1]), None), r"levels must be .* >= 2, got \[5, 3, 1\]"),
    ],
)
def test_bad_mapping_input_gives_precise_error(call, pattern):
    probs, targets = random_probs(2), torch.tensor([[0, 1, 1], [-1, 2, 0]])
    with pytest.raises(ValueError, match=pattern):
        call(probs, targets)


@pytest.mark.unit
def test_resolve_mapping_finds_builtins_and_module_function():
    assert DEFAULT_MAPPING == "moslim"
    for name, fn in BUILTIN_MAPPINGS.items():
        assert resolve_mapping(name) is fn
    assert resolve_mapping("moslim_plugin.core.mappings:expected_level") is expected_level
    assert resolve_mapping(target_logprob) is target_logprob


def _write_plugin(tmp_path, body):
    (tmp_path / "moslim_test_mapping_plugin.py").write_text(body)
    dist = tmp_path / "moslim_test_mapping_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: moslim-test-mapping-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[moslim_plugin.mappings]\nhalf_target = moslim_test_mapping_plugin:half_target\n"
        "broken = moslim_test_mapping_plugin:broken\n"
    )


@pytest.mark.unit
def test_resolve_mapping_loads_an_installed_entry_point(tmp_path, monkeypatch):
    # A real (tiny) installed distribution: a dist-info with entry_points.txt on sys.path, found by importlib.metadata.
    _write_plugin(
        tmp_path,
        "import torch\n"
        "def half_target(probs, targets, levels, stats, scale=0.5):\n"
        "    p = probs.gather(-1, targets.clamp_min(0)[..., None])[..., 0] * (targets >= 0)\n"
        "    return p.sum(-1) * scale, p\n"
        "def broken(probs, targets):\n"
        "    return None\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "moslim_test_mapping_plugin", raising=False)
    fn = resolve_mapping("half_target")
    assert fn.__module__ == "moslim_test_mapping_plugin"
    rewards, _ = fn(torch.tensor([[[0.2, 0.8]]]), torch.tensor([[1]]), torch.tensor([2]), None)
    assert rewards.item() == pytest.approx(0.4)
    assert parse_mapping_kwargs(fn, '{"scale": 2}') == {"scale": 2}
    with pytest.raises(ValueError, match=r"entry point 'moslim_test_mapping_plugin:broken' must accept \(probs, "):
        resolve_mapping("broken")
    with pytest.raises(ValueError, match=r"entry points \(moslim_plugin.mappings\): \['broken', 'half_target'\]"):
        resolve_mapping("nonexistent")


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, pattern",
    [
        ("paper", r"unknown mapping 'paper'; installed: built-in: \['expected_level', 'moslim', 'target_logprob'\]"),
        ("no_such_module_xyz:fn", r"cannot import module 'no_such_module_xyz'"),
        ("moslim_plugin.core.mappings:nothing", r"module 'moslim_plugin.core.mappings' has no attribute 'nothing'"),
        (
            "moslim_plugin.core.mappings:_check_choice",
            r"must accept \(probs, targets, levels, stats, \*\*kwargs\).*is \(name,",
        ),
        ("", r"mapping must be a name or a callable, got ''"),
        (3, r"mapping must be a name or a callable, got 3"),
    ],
)
def test_resolve_mapping_errors_name_the_problem_and_what_is_installed(name, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_mapping(name)


@pytest.mark.unit
def test_mapping_kwargs_from_config_are_checked_by_name():
    assert parse_mapping_kwargs(moslim, '{"norm": "sample", "k": "all"}') == {"norm": "sample", "k": "all"}
    assert parse_mapping_kwargs(moslim, None) == {} and parse_mapping_kwargs(moslim, "") == {}
    with pytest.raises(ValueError, match=r"'moslim' has no keyword\(s\) \['stats_mode'\]; it accepts \['norm', 'k', "):
        parse_mapping_kwargs(moslim, {"stats_mode": "sample"})
    with pytest.raises(ValueError, match=r"mapping kwargs must be a JSON object, got '\{norm: 1\}'"):
        parse_mapping_kwargs(moslim, "{norm: 1}")
    with pytest.raises(ValueError, match=r"mapping kwargs must be a JSON object, got \[1\]"):
        parse_mapping_kwargs(moslim, [1])
