"""The demo pipeline end to end (quick sizes, real models) and the controllability metrics it reports."""

import json
import math
from collections import Counter

import pytest

from moslim_plugin.demo.evaluate import eval_requests, make_judge
from moslim_plugin.demo.metrics import accuracy_ci95, conditional_gap, controllability_metrics, spearman
from moslim_plugin.demo.oracle import demo_spec, judge


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


def answers(policy_hits, prompts=20):
    """Greedy answers of a policy to every full request on `prompts` prompts; `policy_hits(prompt index, request)`
    says whether it meets the request (then achieved = requested, else every level off by one)."""
    from moslim_plugin.demo.evaluate import full_requests

    spec, out = demo_spec(), []
    for i in range(prompts):
        for request in full_requests(spec):
            achieved = dict(request) if policy_hits(i, request) else {n: (lv + 1) % spec.levels[spec.index(n)]
                                                                      for n, lv in request.items()}  # fmt: skip
            out.append({"prompt": f"p{i}", "request": request, "achieved": achieved})
    return out


@pytest.mark.unit
def test_joint_metrics_report_unseen_combinations_apart_with_intervals():
    from moslim_plugin.demo.evaluate import full_requests
    from moslim_plugin.demo.metrics import joint_metrics
    from moslim_plugin.demo.pipeline import UNSEEN

    spec = demo_spec()
    assert len(full_requests(spec)) == 12 and all(len(r) == 3 for r in full_requests(spec))
    # Meets every seen combination on every prompt, an unseen one on every other prompt.
    samples = answers(lambda i, r: r not in UNSEEN or i % 2 == 0)
    m = joint_metrics(spec, samples, UNSEEN)
    assert m["exact_all"]["seen"]["rate"] == 1.0 and m["exact_all"]["seen"]["ci95"] == [1.0, 1.0]
    assert m["exact_all"]["unseen"]["rate"] == 0.5 and m["exact_all"]["unseen"]["n"] == 3 * 20
    lo, hi = m["exact_all"]["unseen"]["ci95"]
    assert lo < 0.5 < hi
    assert m["exact_all"]["all"]["rate"] == pytest.approx((9 + 1.5) / 12)
    key = "length=0,format=1,formality=1"
    assert m["combinations"][key] == {"unseen": True, "n": 20, "exact_all": 0.5,
                                      "accuracy": {"length": 0.5, "format": 0.5, "formality": 0.5}}  # fmt: skip
    assert m["objectives"]["length"] == pytest.approx((9 * 20 + 3 * 10) / 240)


@pytest.mark.unit
def test_paired_differences_are_zero_against_itself_and_exclude_zero_for_a_policy_better_on_every_prompt():
    from moslim_plugin.demo.evaluate import full_requests
    from moslim_plugin.demo.metrics import bootstrap_ci, paired_differences, prompt_cells
    from moslim_plugin.demo.pipeline import UNSEEN

    joint = full_requests(demo_spec())
    base = answers(lambda i, r: i % 4 == 0)  # a quarter of the prompts, every request
    better = answers(lambda i, r: i % 2 == 0)  # the same prompts and as many more
    same = paired_differences(base, base, joint, UNSEEN)
    assert set(same) == {"joint_accuracy", "exact_all", "exact_all_seen", "exact_all_unseen"}  # no single requests
    assert all(d == {"diff": 0.0, "ci95": [0.0, 0.0]} for d in same.values())
    up = paired_differences(better, base, joint, UNSEEN)["exact_all_unseen"]
    assert up["diff"] == pytest.approx(0.25) and 0 < up["ci95"][0] <= 0.25 <= up["ci95"][1]
    # Unpaired, the two intervals overlap; paired, the difference is clearly above 0: the paired test is sharper.
    lo_b, hi_b = bootstrap_ci(prompt_cells(better))
    lo_a, hi_a = bootstrap_ci(prompt_cells(base))
    assert lo_b < hi_a
    with pytest.raises(ValueError, match="the same prompts"):
        bootstrap_ci(prompt_cells(better), prompt_cells(base[:-12]))


@pytest.mark.unit
def test_the_hacking_monitor_flags_agreement_that_falls_and_not_noise():
    from moslim_plugin.demo.report import agreement_monitor

    spec = demo_spec()
    steady = [{"step": s, "agree/length": 0.95 + 0.02 * (s % 2), "agree/format": 0.9} for s in range(1, 13)]
    falling = [{"step": s, "agree/length": 1.0 - 0.05 * s, "agree/format": 0.9} for s in range(1, 13)]
    monitor = agreement_monitor(spec, {"steady": steady, "falling": falling}, rollouts_per_step=32)
    assert not monitor["steady"]["length"]["falling"] and not monitor["steady"]["format"]["falling"]
    assert monitor["falling"]["length"]["falling"] and not monitor["falling"]["format"]["falling"]
    assert monitor["falling"]["length"]["first"] == pytest.approx(0.9)
    assert monitor["falling"]["length"]["min"] == pytest.approx(0.4)
    assert "formality" not in monitor["steady"]  # never logged: no verdict


@pytest.mark.unit
def test_the_oracle_judge_refuses_a_spec_it_cannot_judge_before_any_generation():
    from moslim_plugin.core.spec import load_spec

    judge_fn, name = make_judge(demo_spec())
    assert name == "oracle" and judge_fn(["q"], ["- a\n- b"]) == [{"length": 0, "format": 1, "formality": 0}]
    with pytest.raises(ValueError, match="no judge for objective"):
        make_judge(load_spec("hh"))


def request_demo(sampling="subset"):
    """What request_rows reads of a pipeline.Demo: the spec, the training prompts, the sampling flag, the chat."""
    from types import SimpleNamespace

    from moslim_plugin.core.directives import apply_directive
    from moslim_plugin.demo.pipeline import UNSEEN

    spec = demo_spec()
    return SimpleNamespace(
        spec=spec, train_prompts=[f"question {i}?" for i in range(40)], unseen=UNSEEN,
        request_weights={"format": (1, 2)},  # --demo.list_weight's default
        args=SimpleNamespace(moslim=SimpleNamespace(sampling=sampling)),
        chat=lambda q, r: apply_directive(spec, r, q, "user_suffix", "natural"),
    )  # fmt: skip


@pytest.mark.unit
def test_requests_ask_for_one_to_all_objectives_never_an_unseen_combination_and_lists_twice_as_often():
    from moslim_plugin.core.directives import parse_directive
    from moslim_plugin.demo.pipeline import UNSEEN, request_rows

    demo = request_demo()
    rows = request_rows(demo, 1200, seed=0)
    sizes = Counter(len(r["request"]) for r in rows)
    # k = 1..3, each about a third; a little fewer full requests: the full draws that hit an unseen combination
    # (about a quarter: two of the three ask for a list, and lists are likelier) are drawn again, k and all.
    assert set(sizes) == {1, 2, 3} and min(sizes[1], sizes[2]) > 400 and 300 < sizes[3] < 400
    assert not [r for r in rows if r["request"] in UNSEEN]
    full = Counter(tuple(r["request"].values()) for r in rows if len(r["request"]) == 3)
    assert len(full) == 12 - len(UNSEEN)  # every other full combination is drawn
    # Every level and every pair of levels of two objectives still occurs among the drawn full combinations.
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert len({(c[a], c[b]) for c in full}) == demo.spec.levels[a] * demo.spec.levels[b]
    # Lists 2:1 (among full requests less: two of the three unseen ones are lists, drawn again).
    formats = Counter(r["request"]["format"] for r in rows if "format" in r["request"] and len(r["request"]) < 3)
    assert 0.60 < formats[1] / (formats[0] + formats[1]) < 0.74  # 2 of 3, within 3 standard errors of ~420 draws
    # A joint directive is one paragraph of the spec's sentences that the parser reads back.
    for r in rows[:50]:
        text = r["messages"][-1]["content"]
        assert parse_directive(demo.spec, text) == r["request"]
        assert "\n" not in text.split("\n\n")[-1]
    assert request_rows(demo, 50, seed=0) == rows[:50]  # deterministic in the seed
    assert all(len(r["request"]) == 1 for r in request_rows(request_demo("single"), 60, seed=0))


def stand_in_policy(list_every):
    """Test input standing in for the 135M policy (no model runs in a unit test): it writes the requested length
    and formality exactly, and a list for one in `list_every` of the requests asking for one (0: never)."""

    def answer(rows):
        samples = []
        for i, r in enumerate(rows):
            request = r["request"]
            words = ["word"] * {0: 8, 1: 26, 2: 40}[request.get("length", i % 3)]
            text = ("it's " if request.get("formality") == 1 else "") + " ".join(words)
            if request.get("format") == 1 and list_every and i % list_every == 0:
                text = f"- {text}\n- more"
            samples.append({**r, "response": text, "labels": judge(text, demo_spec())})
        return samples

    return answer


@pytest.mark.unit
def test_the_sample_top_up_lifts_every_rare_level_to_its_share_and_stops_at_its_budget():
    from moslim_plugin.demo.pipeline import request_rows, top_up

    demo = request_demo()
    answer = stand_in_policy(list_every=5)
    samples = answer(request_rows(demo, 200, seed=0))
    lists = sum(s["labels"]["format"] == 1 for s in samples) / len(samples)
    assert lists < 0.15  # the case the top-up exists for
    extra, counts = top_up(demo, samples, answer, 0.15, seed=0)
    rows = samples + extra
    for name, levels in zip(demo.spec.names, demo.spec.levels):
        for level in range(levels):
            assert sum(s["labels"][name] == level for s in rows) / len(rows) >= 0.15, (name, level)
    # Only lists were kept, each marked, and counted; far fewer answers generated than the budget.
    assert extra and all(s["top_up"] == "format=1" and s["labels"]["format"] == 1 for s in extra)
    assert counts["kept"] == {"format=1": len(extra)} and counts["unmet"] == [] and counts["share"] == 0.15
    assert len(extra) <= counts["generated"] < len(samples)
    assert not {s["request"]["format"] for s in extra} - {1}  # every kept answer was asked for a list
    # A higher share needs more lists than the lower one did.
    assert len(top_up(demo, samples, answer, 0.2, seed=0)[0]) > len(extra)
    # A policy that never lists: the top-up stops at its budget (as many answers as samples) and says what is unmet.
    never = stand_in_policy(list_every=0)
    samples = never(request_rows(demo, 100, seed=0))
    extra, counts = top_up(demo, samples, never, 0.15, seed=0)
    assert extra == [] and counts == {"share": 0.15, "generated": 100, "kept": {"format=1": 0}, "unmet": ["format=1"]}


@pytest.mark.unit
def test_the_list_weight_sets_how_often_format_requests_ask_for_a_list(tmp_path):
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.pipeline import Demo, build_parser, request_rows

    def list_share(argv):
        args = hierarchize(build_parser().parse_args(["--quick", "--out", str(tmp_path / str(len(argv))), *argv]))
        rows = request_rows(Demo(args), 1200, seed=0)
        formats = Counter(r["request"]["format"] for r in rows if "format" in r["request"] and len(r["request"]) < 3)
        return formats[1] / (formats[0] + formats[1])

    assert 0.60 < list_share([]) < 0.74  # 2 of 3, within 3 standard errors of ~420 draws
    assert 0.74 < list_share(["--demo.list_weight", "4"]) < 0.86  # 4 of 5


@pytest.mark.unit
def test_a_top_up_share_no_sample_set_can_meet_is_refused_before_any_model_loads(tmp_path):
    from openrlhf.utils.config import hierarchize

    from moslim_plugin import UserError
    from moslim_plugin.demo.pipeline import Demo, build_parser

    args = hierarchize(build_parser().parse_args(["--quick", "--out", str(tmp_path / "d"), "--demo.top_up", "0.4"]))
    with pytest.raises(UserError, match=r"--demo.top_up 0.4: expected a share in \[0, 0.333\]"):
        Demo(args)
    assert not (tmp_path / "d").exists()


@pytest.mark.unit
def test_level_shares_count_each_level_among_all_rollouts_and_among_those_that_asked_for_its_objective():
    from moslim_plugin.demo.report import level_shares, level_shares_text

    spec = demo_spec()

    def step(rollouts):
        """One RL step's logs as the demo's reward_fn writes them: per-rollout values averaged over the step."""
        logs = {"reward": 0.0}
        for name, levels in zip(spec.names, spec.levels):
            asked = [name in request for request, _ in rollouts]
            logs[f"asked/{name}"] = sum(asked) / len(rollouts)
            for level in range(levels):
                hit = [labels[name] == level for _, labels in rollouts]
                logs[f"level/{name}={level}"] = sum(hit) / len(rollouts)
                logs[f"asked_level/{name}={level}"] = sum(h and a for h, a in zip(hit, asked)) / len(rollouts)
        return logs

    plain, listed = {"length": 0, "format": 0, "formality": 0}, {"length": 0, "format": 1, "formality": 0}
    # 8 rollouts: format asked in 4 (one list among them); one list more where format was not asked.
    history = [
        step([({"format": 1}, listed), ({"format": 1}, plain), ({"format": 0}, plain), ({"length": 0}, listed)]),
        step([({"format": 1}, plain), ({"length": 0}, plain), ({"length": 1}, plain), ({"length": 2}, plain)]),
    ]
    history.insert(1, {"step": 1, "curve": {}})  # a curve point between steps: not a step's rollouts
    shares = level_shares(spec, [{"labels": listed}, {"labels": plain}], {"seed 1": history})
    assert shares["samples"]["format=1"] == 0.5
    assert shares["rl_rollouts"]["format=1"] == 2 / 8 and shares["rl_rollouts_asking"]["format=1"] == 1 / 4
    assert shares["rl_rollouts_asking"]["length=0"] == 1.0  # length asked 4 times, always met at level 0
    assert "formality=0" not in shares["rl_rollouts_asking"]  # never asked: no share to report
    text = level_shares_text(shares)
    assert "RL rollouts asking for the objective: " in text and "format=1 0.25, " in text
    assert "length=1 0.00 **below**" in text


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from moslim_plugin.demo.pipeline import main

    out = tmp_path_factory.mktemp("demo")
    # Two seeds keep the smoke test short; a learning-curve point after the one RL step.
    assert main(["--quick", "--out", str(out), "--seeds", "1", "2", "--demo.curve_every", "1"]) == 0
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_quick_demo_produces_every_stage_artefact_with_finite_numbers(quick_demo):
    out = quick_demo
    for path in [
        "samples.jsonl", "rm/config.json", "rm/model.safetensors", "policy_seed1/model.safetensors",
        "policy_seed2/model.safetensors", "policy_seed1/rl_history.json", "report.md", "report.json",
        "requested_vs_achieved.png", "training_curves.png", "eval_samples.json", "combination_grid.png",
        "learning_curve.png",
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
    from moslim_plugin.demo.pipeline import UNSEEN

    assert {len(s["request"]) for s in samples} <= {1, 2, 3} and not [s for s in samples if s["request"] in UNSEEN]
    assert report["settings"]["sampling"] == "subset" and report["settings"]["unseen"] == list(UNSEEN)
    # The default top-up: what it generated and kept is counted, and every kept answer is at the level it was kept for.
    top = summary["sample_top_up"]
    assert report["settings"]["rl_flags"]["demo.top_up"] == top["share"] == 0.15 and top["generated"] <= 16
    extra = [s for s in samples if "top_up" in s]
    assert len(samples) == 16 + len(extra) and len(extra) == sum(top["kept"].values())
    assert all(s["labels"][s["top_up"].split("=")[0]] == int(s["top_up"].split("=")[1]) for s in extra)
    text = (out / "report.md").read_text()
    for section in ("## Targets", "## Joint requests", "## Paired differences", "## Reward-hacking monitor",
                    "## Learning curve"):  # fmt: skip
        assert section in text, section
    # Joint control for every policy: 12 full combinations, 3 of them unseen; paired differences per seed.
    for joint in report["policies_joint"].values():
        assert len(joint["combinations"]) == 12 and sum(c["unseen"] for c in joint["combinations"].values()) == 3
        assert set(joint["exact_all"]) == {"all", "seen", "unseen"}
    assert set(summary["paired"]) == {"MOSLIM seed 1", "MOSLIM seed 2"}
    for against in summary["paired"].values():
        assert set(against) == {"starting policy", "RiC"}
        for d in against.values():
            assert set(d) == {"single_accuracy", "joint_accuracy", "exact_all", "exact_all_seen", "exact_all_unseen"}
            assert all(-1 <= x["ci95"][0] <= x["ci95"][1] <= 1 for x in d.values())
    assert set(summary["targets"]["unseen_exact_all_gain"]["per_seed"]) == {"1", "2"}
    # The monitor's agreement at every step, and the curve: the starting policy at step 0, then after step 1.
    history = report["training"]["MOSLIM seed 1"]
    assert [h["step"] for h in history if "curve" in h] == [0, 1]
    assert all(0 <= h[f"agree/{n}"] <= 1 for h in history if "reward" in h for n in demo_spec().names)
    # Level shares: every (objective, level), from the samples and from the RL rollouts (logged by the reward_fn).
    spec, shares = demo_spec(), summary["level_shares"]
    keys = {f"{n}={lv}" for n, levels in zip(spec.names, spec.levels) for lv in range(levels)}
    assert set(shares["samples"]) == set(shares["rl_rollouts"]) == keys
    for where in ("samples", "rl_rollouts"):
        for name in spec.names:
            assert sum(v for k, v in shares[where].items() if k.startswith(f"{name}=")) == pytest.approx(1.0)
    assert shares["samples"]["format=1"] == sum(s["labels"]["format"] == 1 for s in samples) / len(samples)
    for name in spec.names:  # among the rollouts that asked for an objective, its levels partition them too
        asking = [v for k, v in shares["rl_rollouts_asking"].items() if k.startswith(f"{name}=")]
        assert not asking or sum(asking) == pytest.approx(1.0)


@pytest.mark.integration
@pytest.mark.slow
def test_the_rm_seed_holds_out_other_questions_of_the_same_samples(quick_demo, tmp_path):
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.pipeline import Demo, build_parser, rm_stage
    from moslim_plugin.integration import compat

    compat.install()
    samples = [json.loads(line) for line in (quick_demo / "samples.jsonl").read_text().splitlines()]
    held_out = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        args = hierarchize(build_parser().parse_args(["--quick", "--out", str(out), "--demo.rm_seed", str(seed)]))
        _, result = rm_stage(Demo(args), samples)
        assert result["split"]["seed"] == seed
        rows = (out / "rm/held_out.jsonl").read_text().splitlines()
        held_out[seed] = {json.loads(line)["question"] for line in rows}
    assert held_out[0] and held_out[1] and held_out[0] != held_out[1]


@pytest.mark.integration
@pytest.mark.slow
def test_the_level_share_region_sets_each_run_beside_its_baselines_seeds_and_says_where_all_its_seeds_fall_below(
    quick_demo, monkeypatch, tmp_path
):
    from bench import render_docs
    from moslim_plugin.demo.report import paired_text

    report = json.loads((quick_demo / "report.json").read_text())
    monkeypatch.setattr(render_docs, "ROOT", tmp_path)  # the runs' reports are linked relative to ROOT/docs
    # The baseline is the quick demo (both seeds its own); the other run's every seed is below every baseline seed on
    # the unseen exact-all rate (an edited copy of the report).
    worse = json.loads(json.dumps(report))
    lowest = min(h["exact_all_unseen"]["value"] for p, h in report["summary"]["headline"].items() if "MOSLIM" in p)
    for seed in report["settings"]["seeds"]:
        worse["summary"]["headline"][f"MOSLIM seed {seed}"]["exact_all_unseen"]["value"] = lowest - 0.5 + seed / 100
    paths = {}
    for name, content in (("base", report), ("worse", worse)):
        paths[name] = tmp_path / f"docs/demo/{name}/report.json"
        paths[name].parent.mkdir(parents=True)
        paths[name].write_text(json.dumps(content))
    runs = {name: (path, f"command {name}", f"what {name} changed") for name, path in paths.items()}
    monkeypatch.setattr(render_docs, "BALANCING_RUNS", runs)
    text = render_docs.demo_balancing()
    assert "- worse: what worse changed; `command worse`; [its report](demo/worse/report.md)." in text
    for run, source in (("base", report), ("worse", worse)):
        for seed in report["settings"]["seeds"]:
            head = source["summary"]["headline"][f"MOSLIM seed {seed}"]
            gain = source["summary"]["paired"][f"MOSLIM seed {seed}"]["starting policy"]["single_accuracy"]
            row = next(line for line in text.splitlines() if line.startswith(f"| {run} | {seed} |"))
            assert f"| {head['exact_all_unseen']['value']:.3f} [" in row and f"| {paired_text(gain)} |" in row
    assert "**worse**: every seed below every base seed on exact-all, unseen, above on neither metric." in text
    assert "**base**: Level shares (all seeds): samples: " in text
    assert "- The rarest level per seed (all RL rollouts; bar: 15 %): seed 1 " in text
    # Without the baseline's report the region names the top-up run's command.
    monkeypatch.setattr(render_docs, "BALANCING_RUNS", {**runs, "base": (tmp_path / "none.json", "c", "w")})
    assert render_docs.demo_balancing() == render_docs.not_run("demo_balancing")


def draw_run(rm_seed, single, unseen, rarest=0.2, top_up=0.0, list_weight=2):
    """A `balancing_runs` entry: three RL seeds at these means on one RM draw, every level share `rarest` or more."""
    cells = {str(seed): {"headline": {"single_accuracy": {"value": single + d},
                                      "exact_all_unseen": {"value": unseen + d}}}
             for seed, d in ((1, -0.01), (2, 0.0), (3, 0.01))}  # fmt: skip
    shares = {"format=0": 1 - rarest, "format=1": rarest}
    report = {"settings": {"rl_flags": {"demo.rm_seed": rm_seed}, "request_weights": {"format": [1, list_weight]}},
              "summary": {"level_shares": {"samples": shares, "rl_rollouts": shares},
                          "sample_top_up": {"share": top_up} if top_up else None}}  # fmt: skip
    return {"cells": cells}, report


@pytest.mark.unit
def test_an_option_replaces_the_default_over_rm_draws_unless_it_is_below_it_on_every_draw():
    from bench.render_docs import rm_draw_text, rm_draw_verdict

    def found(top_up, balanced=None, rarest=0.2, rm_seeds=(0, 1)):
        runs = {"no top-up": draw_run(0, 0.72, 0.12, rarest=0.09), "RM seed 1": draw_run(1, 0.71, 0.06, rarest=0.09),
                "top-up": draw_run(rm_seeds[0], *top_up[0], rarest, 0.15),
                "top-up, RM seed 1": draw_run(rm_seeds[1], *top_up[1], rarest, 0.15)}  # fmt: skip
        if balanced:
            runs["balanced"] = draw_run(0, *balanced[0], rarest, 0.15, 4)
            runs["balanced, RM seed 1"] = draw_run(1, *balanced[1], rarest, 0.15, 4)
        return runs

    # Below the baseline on one RM draw, above on the other: not measured worse, and the bar holds.
    v = rm_draw_verdict(found([(0.72, 0.06), (0.72, 0.08)]))
    assert v["best"] == "top-up" and v["options"]["top-up"]["worse_on"] == []
    assert v["means"]["top-up"]["exact_all_unseen"] == [0.06, 0.08] and set(v["options"]) == {"top-up"}
    assert "**top-up becomes the default (`--demo.top_up 0.15`).**" in rm_draw_text(v)
    # Below on every draw on one metric: not adopted, naming it.
    v = rm_draw_verdict(found([(0.72, 0.06), (0.72, 0.05)]))
    assert v["best"] == "no top-up" and v["options"]["top-up"]["worse_on"] == ["exact_all_unseen"]
    assert "below no top-up on every draw on exact-all, unseen: not adopted" in rm_draw_text(v)
    assert "**no top-up stays the default.**" in rm_draw_text(v)
    # Two options adopted: the higher mean unseen rate wins.
    v = rm_draw_verdict(found([(0.72, 0.06), (0.72, 0.08)], balanced=[(0.72, 0.10), (0.72, 0.09)]))
    assert v["options"]["balanced"]["adopt"] and v["options"]["top-up"]["adopt"] and v["best"] == "balanced"
    # A level under the bar in an option's own samples or rollouts: not adopted whatever it measured.
    v = rm_draw_verdict(found([(0.80, 0.20), (0.80, 0.20)], rarest=0.14))
    assert not v["options"]["top-up"]["bar_met"] and v["best"] == "no top-up"
    # A run whose report ran another RM seed or option than it is filed under is refused; a missing run: no verdict.
    with pytest.raises(ValueError, match=r"files 'top-up, RM seed 1' under 'top-up' at RM seed 1, but it ran"):
        rm_draw_verdict(found([(0.72, 0.06), (0.72, 0.08)], rm_seeds=(0, 0)))
    runs = found([(0.72, 0.06), (0.72, 0.08)])
    runs["top-up"] = draw_run(0, 0.72, 0.06, 0.2, 0.15, list_weight=4)
    with pytest.raises(ValueError, match=r"files 'top-up' under 'top-up' at RM seed 0, but it ran .*list_weight': 4"):
        rm_draw_verdict(runs)
    del runs["top-up, RM seed 1"]
    assert rm_draw_verdict(runs) is None


@pytest.mark.unit
def test_the_demos_level_share_defaults_are_the_option_the_committed_rm_draws_chose():
    from bench.render_docs import RM_DRAWS, balancing_runs, rm_draw_verdict
    from moslim_plugin.demo.pipeline import build_parser

    verdict = rm_draw_verdict(balancing_runs())
    assert verdict is not None and "top-up" in verdict["options"]
    default = vars(build_parser().parse_args([]))
    for option, (flags, _) in RM_DRAWS.items():
        if option == verdict["baseline"] or option in verdict["options"]:
            assert (vars(build_parser().parse_args(flags.split())) == default) == (option == verdict["best"]), option


@pytest.mark.integration
@pytest.mark.slow
def test_the_docs_render_every_seed_of_a_run_that_trained_several_and_time_make_demo_as_its_first(
    quick_demo, monkeypatch
):
    from bench import render_docs
    from moslim_plugin.demo.report import paired_text

    report = json.loads((quick_demo / "report.json").read_text())
    monkeypatch.setattr(render_docs, "DEMO_REPORT", quick_demo / "report.json")
    monkeypatch.setattr(render_docs, "MAKE_DEMO_REPORT", quick_demo / "report.json")
    t = report["timings_s"]
    one_seed = (t["total"] - t["MOSLIM RL seed 2"]) / 60  # `make demo` stops after seed 1
    joint = render_docs.demo_joint()
    timed = joint.split("2 idle cores: ")[1].split("; this run is")[0]
    assert timed.startswith(f"met ({one_seed:.1f} min: sample ") and "MOSLIM RL seed 1" in timed
    assert "MOSLIM RL seed 2" not in timed
    assert f"this run took {t['total'] / 60:.0f} min for 2 seeds" in joint
    assert "- Seeds 1, 2: [every seed of the default]" in joint
    seeds = render_docs.demo_seeds()  # from the run's own report: no ablation file needed
    assert seeds.startswith("the run above, which trained every seed itself: 2 seeds")
    for seed in ("1", "2"):
        gain = report["summary"]["paired"][f"MOSLIM seed {seed}"]["starting policy"]["exact_all_unseen"]
        row = next(line for line in seeds.splitlines() if line.startswith(f"| {seed} |"))
        assert f"| {paired_text(gain)} |" in row
    assert "- The rarest level per seed (RL rollouts asking for the objective; bar: 15 %): seed 1 " in seeds
    assert "Target" not in seeds  # the run's own targets are in its region above, once


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
    # One prompt: every single-objective request, every full combination, no preference.
    assert len(samples["base"]) == sum(demo_spec().levels) + 12 + 1
    assert not [(where, v) for where, v in walk_numbers(report) if not math.isfinite(v)]
    # fp32 weights on both devices (TF32 matmuls on the GPU): bf16 weights would lose most AdamW steps.
    assert json.loads((out / "policy_seed1" / "config.json").read_text())["dtype"] == "float32"
    assert f"size preset `gpu` on `{device}`" in (out / "report.md").read_text()
    if device == "cuda":
        assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.integration
@pytest.mark.slow
def test_demo_rules_option_scores_length_and_format_exactly_and_reuses_the_learned_runs_base_evaluation(
    tiny_policy, tmp_path, capsys
):
    """--demo.rules length,format at tiny sizes, after the learned run in the same folder: the RM gets one head
    (formality), the rules agree with the oracle on every answer and rollout, and the starting policy's evaluation
    is the learned run's cached one (the two runs compare the same starting answers)."""
    from moslim_plugin.demo.pipeline import main

    out = tmp_path / "demo"
    argv = ["--out", str(out), "--seeds", "1", "--actor.model_name_or_path", str(tiny_policy),
            "--moslim.trainable_layers", "1", "--demo.samples", "8", "--demo.rm_epochs", "1", "--demo.eval_prompts",
            "1", "--demo.eval_samples", "0", "--demo.rl_steps", "1", "--demo.batch", "2", "--demo.max_new_tokens",
            "4", "--demo.ric_epochs", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "(cached: " not in capsys.readouterr().out
    assert main([*argv, "--demo.rules", "length,format"]) == 0
    assert "(cached: " in capsys.readouterr().out
    assert len(list(out.glob("eval_base_*.json"))) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["rules"] == ["length", "format"]
    rm = json.loads((out / "rm" / "config.json").read_text())["moslim"]
    assert [o.get("rule", {}).get("name") for o in rm["spec"]["objectives"]] == ["word_count", "bulleted_list", None]
    assert list(report["summary"]["rm_eval"]) == ["formality"]
    for policy in report["policies"].values():
        assert policy["rm_agreement"]["length"]["accuracy"] == policy["rm_agreement"]["format"]["accuracy"] == 1.0
    steps = [h for h in report["training"]["MOSLIM seed 1"] if "reward" in h]
    assert steps and all(h["agree/length"] == h["agree/format"] == 1.0 for h in steps)
    assert "exact rule for length" in (out / "report.md").read_text()


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
