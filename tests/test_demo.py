"""The demo pipeline end to end (quick sizes, real models) and the controllability metrics it reports."""

import json
import math
from collections import Counter

import pytest

from moslim_plugin.demo.evaluate import (
    accuracy_ci95,
    conditional_gap,
    controllability_metrics,
    eval_requests,
    make_judge,
    spearman,
)
from moslim_plugin.demo.oracle import demo_spec


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
def test_eval_requests_try_every_level_on_every_prompt_plus_a_default_per_prompt():
    spec = demo_spec()
    prompts = ["q0", "q1", "q2"]
    pairs = eval_requests(spec, prompts)
    every = {(n, lv) for n, levels in zip(spec.names, spec.levels) for lv in range(levels)}
    for p in prompts:
        singles = [next(iter(r.items())) for q, r in pairs if q == p and r]
        assert sorted(singles) == sorted(every)  # each pair once per prompt
    assert [p for p, r in pairs if not r] == prompts


@pytest.mark.unit
def test_controllability_metrics_score_requested_and_unrequested_objectives():
    spec = demo_spec()
    default = {"length": 2, "format": 0, "formality": 0}
    samples = [
        {"prompt": "a", "request": {}, "achieved": default},
        {"prompt": "b", "request": {}, "achieved": default},
        # length requested: one hit (0), one off by two; formality moved on prompt "a" although not requested
        {"prompt": "a", "request": {"length": 0}, "achieved": {"length": 0, "format": 0, "formality": 1}},
        {"prompt": "b", "request": {"length": 0}, "achieved": {"length": 2, "format": 0, "formality": 0}},
    ]
    m = controllability_metrics(spec, samples)["objectives"]
    assert m["length"]["accuracy"] == 0.5 and m["length"]["mae"] == 1.0 and m["length"]["n"] == 2
    assert m["formality"]["unrequested_kept"] == 0.5
    assert m["format"]["unrequested_kept"] == 1.0
    assert m["length"]["by_level"]["0"] == [1, 0, 1]
    assert m["length"]["default_distribution"] == [0.0, 0.0, 1.0]
    # Without no-preference answers (the sampled evaluation) there is no default to keep.
    m = controllability_metrics(spec, samples[2:])
    assert "unrequested_kept" not in m["mean"] and "unrequested_kept" not in m["objectives"]["length"]


@pytest.mark.unit
def test_conditional_gap_is_one_for_perfect_control_zero_when_ignored_and_the_binary_difference():
    assert conditional_gap([[5, 0, 0], [0, 5, 0], [0, 0, 5]]) == 1.0
    assert conditional_gap([[2, 3], [2, 3]]) == 0.0  # the request changes nothing
    # P(1 | asked 1) - P(1 | asked 0) = 0.8 - 0.3
    assert conditional_gap([[7, 3], [2, 8]]) == pytest.approx(0.5)
    assert conditional_gap([[0, 0], [2, 8]]) == 0.0  # one side never asked: no gap to measure, not NaN


@pytest.mark.unit
def test_accuracy_interval_brackets_the_mean_and_shrinks_to_a_point_when_every_prompt_agrees():
    spec = demo_spec()
    hit = {"length": 0, "format": 0, "formality": 0}
    same = [{"prompt": f"p{i}", "request": {"length": 0}, "achieved": hit} for i in range(20)]
    assert accuracy_ci95(spec, same) == [1.0, 1.0]
    mixed = [{"prompt": f"p{i}", "request": {"format": 1}, "achieved": {**hit, "format": i % 2}} for i in range(40)]
    lo, hi = accuracy_ci95(spec, mixed)
    assert lo < 0.5 < hi and hi - lo < 0.5


@pytest.mark.unit
def test_the_oracle_judge_refuses_a_spec_it_cannot_judge_before_any_generation():
    from moslim_plugin.core.spec import load_spec

    judge_fn, name = make_judge(demo_spec())
    assert name == "oracle" and judge_fn(["q"], ["- a\n- b"]) == [{"length": 0, "format": 1, "formality": 0}]
    with pytest.raises(ValueError, match="no judge for objective"):
        make_judge(load_spec("hh"))


@pytest.mark.unit
def test_one_objective_requests_take_turns_and_a_list_is_asked_for_twice_as_often_as_a_paragraph():
    from moslim_plugin.demo.pipeline import turn_rows

    spec = demo_spec()
    _, requests = turn_rows(spec, ["a question"], 36, seed=0)
    assert all(len(r) == 1 for r in requests)
    counts = Counter((name, level) for r in requests for name, level in r.items())
    assert sum(n for (name, _), n in counts.items() if name == "format") == 12  # objectives take turns
    assert (counts[("format", 0)], counts[("format", 1)]) == (4, 8)  # REQUEST_WEIGHTS: lists 2:1
    assert [counts[("length", level)] for level in range(3)] == [4, 4, 4]  # unlisted: levels equally often
    _, equal = turn_rows(spec, ["a question"], 36, seed=0, weights={})
    assert Counter(r["format"] for r in equal if "format" in r) == {0: 6, 1: 6}
    with pytest.raises(ValueError, match=r"'format': expected 2 positive integers, got \(1,\)"):
        turn_rows(spec, ["a question"], 3, seed=0, weights={"format": (1,)})
    with pytest.raises(ValueError, match=r"\['tone'\]: not objectives"):
        turn_rows(spec, ["a question"], 3, seed=0, weights={"tone": (1, 1)})


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from moslim_plugin.demo.pipeline import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["--quick", "--out", str(out), "--seeds", "1", "2"]) == 0  # two seeds keep the smoke test short
    return out


@pytest.mark.integration
@pytest.mark.slow
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
    summary = report["summary"]
    for key in ("moslim_accuracy_per_seed", "base_accuracy", "ric_accuracy"):
        assert key in summary
    for lo, hi in [summary["base_accuracy_ci95"], summary["ric_accuracy_ci95"], *summary["moslim_accuracy_ci95"]]:
        assert 0 <= lo <= hi <= 1
    assert set(summary["gap"]) == set(summary["sampled_gap"]) == set(report["policies"])
    assert report["settings"]["style"] == "natural" and report["settings"]["judge"] == "oracle"
    assert report["settings"]["preset"] == "quick" and report["settings"]["device"] == "cpu"  # --quick: the alias
    bad = [(where, v) for where, v in walk_numbers(report) if not math.isfinite(v)]
    assert not bad
    timings = report["timings_s"]
    assert all(0 <= t <= timings["total"] for t in timings.values()), timings
    for policy in report["policies"].values():
        assert set(policy["rm_agreement"]) == set(demo_spec().names)
        assert all(0 <= v["macro_f1"] <= 1 and 0 <= v["accuracy"] <= 1 for v in policy["rm_agreement"].values())
    assert summary["rm_on_base_answers"] == report["policies"]["base"]["rm_agreement"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(set(s["labels"]) == set(demo_spec().names) for s in samples)
    assert all(len(s["request"]) == 1 for s in samples)  # one objective per request, as the RL asks
    assert "Beats the starting policy by more than the seed spread" in (out / "report.md").read_text()
    # Level shares: every (objective, level), from the samples and from the RL rollouts (logged by the reward_fn).
    spec, shares = demo_spec(), summary["level_shares"]
    keys = {f"{n}={lv}" for n, levels in zip(spec.names, spec.levels) for lv in range(levels)}
    assert set(shares["samples"]) == set(shares["rl_rollouts"]) == keys
    for where in ("samples", "rl_rollouts"):
        for name in spec.names:
            assert sum(v for k, v in shares[where].items() if k.startswith(f"{name}=")) == pytest.approx(1.0)
    assert shares["samples"]["format=1"] == sum(s["labels"]["format"] == 1 for s in samples) / len(samples)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_gpu_preset_runs_every_stage_on_the_chosen_device_with_its_own_flag_defaults(device, tiny_policy, tmp_path):
    """The gpu preset's code path at tiny sizes (a random 3-layer policy, one RL step, one held-out prompt): every
    stage on `device`, the preset's sizes where not overridden, its flag defaults unless a flag is given. The full
    preset on a GPU is bench/device/run.sh's demo step."""
    import torch

    from moslim_plugin.demo.pipeline import GPU_FLAGS, SIZES, main

    out = tmp_path / "demo"
    argv = ["--demo.size", "gpu", "--device", device, "--out", str(out), "--seeds", "1",
            "--actor.model_name_or_path", str(tiny_policy), "--moslim.trainable_layers", "1", "--demo.samples", "8",
            "--demo.rm_epochs", "1", "--demo.eval_prompts", "1", "--demo.rl_steps", "1", "--demo.batch", "2",
            "--demo.max_new_tokens", "4", "--rollout.micro_batch_size", "4"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["preset"] == "gpu" and settings["device"] == device
    assert settings["size"]["eval_samples"] == SIZES["gpu"]["eval_samples"] and settings["size"]["samples"] == 8
    flags = settings["rl_flags"]
    assert flags["moslim.generate_batch_size"] == GPU_FLAGS["moslim.generate_batch_size"]
    assert flags["rollout.micro_batch_size"] == 4  # given on the command line: wins over the preset's default
    assert set(report["policies"]) == {"base", "RiC SFT", "MOSLIM seed 1"}
    samples = json.loads((out / "eval_samples.json").read_text())
    assert len(samples["base"]) == sum(demo_spec().levels) + 1  # one prompt: every single-objective request + none
    assert not [(where, v) for where, v in walk_numbers(report) if not math.isfinite(v)]
    # fp32 weights on both devices (TF32 matmuls on the GPU): bf16 weights would lose most AdamW steps.
    assert json.loads((out / "policy_seed1" / "config.json").read_text())["dtype"] == "float32"
    assert f"size preset `gpu` on `{device}`" in (out / "report.md").read_text()
    if device == "cuda":
        assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.unit
def test_quick_is_an_alias_of_the_quick_size_preset_and_presets_keep_one_set_of_keys():
    from moslim_plugin.demo.pipeline import SIZES, build_parser

    assert vars(build_parser().parse_args(["--quick"]))["demo.size"] == "quick"
    assert vars(build_parser().parse_args([]))["demo.size"] == "full"
    assert all(set(size) == set(SIZES["full"]) for size in SIZES.values())  # every key has a --demo.<key> flag
    full, gpu = SIZES["full"], SIZES["gpu"]
    rl_samples = {name: s["rl_steps"] * s["batch"] for name, s in (("full", full), ("gpu", gpu))}
    assert rl_samples["gpu"] == 20 * rl_samples["full"] and gpu["samples"] == 20 * full["samples"]


@pytest.mark.integration
@pytest.mark.slow
def test_evaluate_command_works_on_any_policy_checkpoint_with_an_rm(quick_demo, tmp_path):
    from moslim_plugin.demo.evaluate import main

    argv = ["--actor.model_name_or_path", str(quick_demo / "policy_seed1"), "--reward.model_name_or_path",
            str(quick_demo / "rm"), "--eval.max_samples", "2", "--rollout.max_new_tokens", "4",
            "--eval.output_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    pairs = sum(demo_spec().levels)
    assert len(result["samples"]) == 2 * (pairs + 1)  # 2 prompts x (every single-objective request + no preference)
    assert len(result["sampled_samples"]) == 2 * pairs * 2  # and 2 sampled answers per single-objective request
    assert result["judge"] == "oracle" and set(result["metrics"]["rm_agreement"]) == set(demo_spec().names)
    # The same policy judged by the reward model instead of the oracle: the report says so.
    judged = tmp_path / "rm_judged"
    assert main([*argv[:-1], str(judged), "--eval.judge", "rm", "--eval.n_samples_per_prompt", "0"]) == 0
    result = json.loads((judged / "eval.json").read_text())
    assert result["judge"] == "reward model" and "rm_agreement" not in result["metrics"]
    assert "Judged by the **reward model**" in (judged / "eval.md").read_text()
    assert (tmp_path / "eval.md").is_file() and (tmp_path / "requested_vs_achieved.png").is_file()


@pytest.mark.unit
def test_rm_data_edits_cut_flip_the_format_make_text_formal_and_straddle_verdict_changes_relabelled_by_the_oracle():
    from moslim_plugin.demo.pipeline import augment

    spec = demo_spec()
    prose = {"question": "q", "response": "It's easy! You mix it. Then you bake it for an hour."}
    listed = {"question": "q", "response": "Steps:\n- Mix it.\n- Bake it."}
    cut, cut_words, formal, other = augment([prose], spec, seed=0)
    assert formal["response"] == "It is easy. one mix it. Then one bake it for an hour."  # case kept as is
    assert formal["labels"]["formality"] == 0 and other["labels"]["format"] == 1
    assert len(cut["response"].split()) <= len(prose["response"].split())
    words = prose["response"].split()  # a prefix of the words, at least one shorter than the response
    assert (
        cut_words["response"] == " ".join(words[: len(cut_words["response"].split())])
        and len(words) > len(cut_words["response"].split()) >= 1
    )
    assert cut_words["labels"]["length"] == 0 and cut_words["question"] == "q"
    _, cut_words, _, other, *pair = augment([listed], spec, seed=0)
    assert other["response"] == "Steps: Mix it. Bake it." and other["labels"]["format"] == 0
    assert listed["response"].startswith(cut_words["response"])  # its line breaks kept, as a truncated rollout's
    # And the word prefixes either side of where the oracle's verdict changes: the second list item, word 21.
    assert [(row["response"], row["labels"]["format"]) for row in pair] == [
        ("Steps:\n- Mix it.\n-", 0),
        ("Steps:\n- Mix it.\n- Bake", 1),
    ]
    long = {"question": "q", "response": " ".join(f"word{i}" for i in range(30))}
    pair = augment([long], spec, seed=0)[4:]
    assert [(len(row["response"].split()), row["labels"]["length"]) for row in pair] == [(20, 0), (21, 1)]
    assert len(augment([prose], spec, seed=0)) == 4  # no verdict changes along its words: no pair
    assert all(set(row["labels"]) == set(spec.names) for row in augment([prose, listed], spec, seed=1))
