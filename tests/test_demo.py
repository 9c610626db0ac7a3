"""The demo pipeline end to end (quick sizes, real models) and the controllability metrics it reports."""

import json
import math

import pytest

from moslim_plugin.evaluate import controllability_metrics, eval_requests, spearman
from moslim_plugin.oracle import demo_spec


def walk_numbers(obj, where="report"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk_numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk_numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


@pytest.mark.unit
def test_spearman_is_one_for_monotone_ties_allowed_and_zero_for_constant_output():
    assert spearman([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
    assert spearman([0, 1, 2], [2, 1, 0]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2], [1, 1, 1]) == 0.0  # the policy ignores the request: no correlation, not NaN


@pytest.mark.unit
def test_eval_requests_cover_every_level_once_per_cycle_plus_a_default_per_prompt():
    spec = demo_spec()
    prompts = [f"q{i}" for i in range(sum(spec.levels))]
    pairs = eval_requests(spec, prompts)
    singles = {(next(iter(r)), next(iter(r.values()))) for _, r in pairs if r}
    assert singles == {(n, lv) for n, levels in zip(spec.names, spec.levels) for lv in range(levels)}
    assert [p for p, r in pairs if not r] == prompts


@pytest.mark.unit
def test_controllability_metrics_score_requested_and_unrequested_objectives():
    spec = demo_spec()
    default = {"length": 2, "format": 0, "excitement": 0}
    samples = [
        {"prompt": "a", "request": {}, "achieved": default},
        {"prompt": "b", "request": {}, "achieved": default},
        # length requested: one hit (0), one off by two; format moved on prompt "a" although not requested
        {"prompt": "a", "request": {"length": 0}, "achieved": {"length": 0, "format": 1, "excitement": 0}},
        {"prompt": "b", "request": {"length": 0}, "achieved": {"length": 2, "format": 0, "excitement": 0}},
    ]
    m = controllability_metrics(spec, samples)["objectives"]
    assert m["length"]["accuracy"] == 0.5 and m["length"]["mae"] == 1.0 and m["length"]["n"] == 2
    assert m["format"]["unrequested_kept"] == 0.5
    assert m["excitement"]["unrequested_kept"] == 1.0
    assert m["length"]["by_level"]["0"] == [1, 0, 1]
    assert m["length"]["default_distribution"] == [0.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from moslim_plugin.demo import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


@pytest.mark.integration
def test_quick_demo_produces_every_stage_artefact_with_finite_numbers(quick_demo):
    out = quick_demo
    for path in [
        "samples.jsonl", "rm/config.json", "rm/model.safetensors", "policy_seed1/model.safetensors",
        "policy_seed2/model.safetensors", "policy_seed1/rl_history.json", "report.md", "report.json",
        "requested_vs_achieved.png", "training_curves.png", "eval_samples.json",
    ]:  # fmt: skip
        assert (out / path).is_file() and (out / path).stat().st_size > 0, path
    report = json.loads((out / "report.json").read_text())
    assert set(report["policies"]) == {"base", "RiC SFT", "MOSLIM seed 1", "MOSLIM seed 2"}
    bad = [(where, v) for where, v in walk_numbers(report) if not math.isfinite(v)]
    assert not bad
    timings = report["timings_s"]
    assert all(0 <= t <= timings["total"] for t in timings.values()), timings
    for policy in report["policies"].values():
        assert set(policy["rm_agreement"]) == set(demo_spec().names)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(set(s["labels"]) == set(demo_spec().names) for s in samples)
    assert "Beats the starting policy by more than the seed spread" in (out / "report.md").read_text()


@pytest.mark.integration
def test_evaluate_command_works_on_any_policy_checkpoint_with_an_rm(quick_demo, tmp_path):
    from moslim_plugin.evaluate import main

    argv = ["--actor.model_name_or_path", str(quick_demo / "policy_seed1"), "--reward.model_name_or_path",
            str(quick_demo / "rm"), "--eval.max_samples", "2", "--rollout.max_new_tokens", "4",
            "--eval.output_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert len(result["samples"]) == 4  # 2 prompts x (one request + no preference)
    assert set(result["metrics"]["rm_agreement"]) == set(demo_spec().names)
    assert (tmp_path / "eval.md").is_file() and (tmp_path / "requested_vs_achieved.png").is_file()
