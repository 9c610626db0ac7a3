"""bench/demo_ablation.py on a real quick demo run: every cell, reuse of the demo's cells, resume, refusal."""

import json

import pytest

from moslim_plugin import UserError

SETTINGS = ["base_tagged", "base_natural", "ric", "moslim", "moslim_best"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from moslim_plugin.demo.pipeline import main

    out = tmp_path_factory.mktemp("demo")
    # 1 step x 2 prompts x 4 samples = 8 rollouts, so the demo samples 8 for RiC: the ablation's fairness check.
    # (8 samples = 8 questions: the fewest with which the RM's split by question leaves a held-out row.)
    argv = ["--quick", "--out", str(out), "--seeds", "1", "--demo.samples", "8", "--demo.rl_steps", "1",
            "--demo.batch", "2", "--rollout.n_samples_per_prompt", "4", "--demo.eval_prompts", "1",
            "--demo.max_new_tokens", "4", "--train.max_epochs", "1"]  # fmt: skip
    # One PPO epoch: the demo's seed 1 is then the ablation's on-policy cell, reused; the demo's default is 2.
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def ablation(demo_dir, tmp_path_factory):
    from bench.demo_ablation import main_run

    out = tmp_path_factory.mktemp("ablation") / "ablation.json"
    # Seed 1 of `moslim` is the demo's own run (reused); seed 2 is trained here.
    argv = ["--demo_dir", str(demo_dir), "--seeds", "1", "2", "--out", str(out), "--ric.epochs", "1",
            "--ric.lrs", "5e-5", "2e-4", "--ric.val_prompts", "1", "--settings", *SETTINGS]  # fmt: skip
    assert main_run(argv) == 0
    return argv, out


@pytest.mark.integration
@pytest.mark.slow
def test_ablation_measures_every_setting_and_seed_and_writes_table_and_plot(ablation):
    _, out = ablation
    result = json.loads(out.read_text())
    cells = result["cells"]
    assert list(cells) == SETTINGS
    for name in SETTINGS:
        expected = {"all"} if name.startswith("base_") else {"1", "2"}  # the starting policy is evaluated once
        assert set(cells[name]) == expected, name
        for c in cells[name].values():
            lo, hi = c["metrics"]["mean"]["accuracy_ci95"]
            assert 0 <= lo <= c["metrics"]["mean"]["accuracy"] <= hi <= 1
            assert c["sampled_metrics"]["mean"]["accuracy"] >= 0 and c["wall_s"] >= 0
    summary = result["summary"]
    assert set(summary["settings"]) == set(SETTINGS)
    assert set(summary["target"]) == {"moslim", "moslim_best"}
    assert all(v["met"] in (True, False) for v in summary["target"].values())
    # Each setting ran with its own directive style and RL flags, the rest being the demo's.
    assert cells["base_tagged"]["all"]["style"] == "tagged"
    assert all(c["style"] == "natural" for name in SETTINGS[1:] for c in cells[name].values())
    flags = {name: cells[name]["2"]["rl_flags"] for name in ("moslim", "moslim_best")}
    assert (flags["moslim"]["train.max_epochs"], flags["moslim_best"]["train.max_epochs"]) == (1, 2)
    assert cells["moslim_best"]["2"]["source"] == "run"
    md = out.with_suffix(".md").read_text()
    for name in SETTINGS:
        assert f"| {name} |" in md
    assert "python -m bench.demo_ablation --demo_dir" in md and "python -m moslim_plugin demo" in md
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.integration
@pytest.mark.slow
def test_cells_the_demo_measured_are_taken_from_its_report_unchanged(ablation, demo_dir):
    _, out = ablation
    cells = json.loads(out.read_text())["cells"]
    report = json.loads((demo_dir / "report.json").read_text())
    assert report["settings"]["style"] == "natural"
    reused = {("base_natural", "all"): "base", ("moslim", "1"): "MOSLIM seed 1"}
    for (name, seed), policy in reused.items():
        c = cells[name][seed]
        assert c["source"].startswith("demo report")
        assert c["metrics"] == report["policies"][policy]
        assert c["sampled_metrics"] == report["policies_sampled"][policy]
        assert c["joint_metrics"] == report["policies_joint"][policy]
    # Paired against the demo's starting policy on the same items: the reused starting policy differs by exactly 0.
    zero = cells["base_natural"]["all"]["paired"]["starting policy"]
    assert zero and all(d == {"diff": 0.0, "ci95": [0.0, 0.0]} for d in zero.values())
    # Seed 1 is the demo's own MOSLIM run (reused): against itself every difference is 0. The demo ran no seed 2.
    itself = cells["moslim"]["1"]["paired"]["demo MOSLIM, same seed"]
    assert itself and all(d == {"diff": 0.0, "ci95": [0.0, 0.0]} for d in itself.values())
    # Against the demo's RiC policy too, computed as the demo's report computes it (the same paired bootstrap).
    assert cells["moslim"]["1"]["paired"]["RiC"] == report["summary"]["paired"]["MOSLIM seed 1"]["RiC"]
    assert set(cells["moslim"]["2"]["paired"]) == {"starting policy", "RiC"}
    assert cells["moslim"]["2"]["source"] == "run" and cells["base_tagged"]["all"]["source"] == "run"


@pytest.mark.integration
@pytest.mark.slow
def test_a_moslim_setting_whose_flags_are_the_demos_is_taken_from_its_report(demo_dir, tmp_path, capsys):
    import argparse

    from bench.demo_ablation import build_demos, build_parser, load_demo_run, print_plan, reused_cell

    # The demo already runs the "best" flags (here: its one PPO epoch): training that cell again would cost a seed's
    # RL for the same numbers. Another flag is measured again.
    report, samples = load_demo_run(demo_dir)
    for best_flags, reused in [("--train.max_epochs 1", True), ("--train.max_epochs 2", False)]:
        a = build_parser().parse_args(["--demo_dir", str(demo_dir), "--out", str(tmp_path / "a.json"),
                                       "--settings", "moslim_best", f"--best_flags={best_flags}"])  # fmt: skip
        eval_samples = json.loads((demo_dir / "eval_samples.json").read_text())
        ctx = argparse.Namespace(a=a, report=report, demos=build_demos(a, report, samples), eval_samples=eval_samples)
        c = reused_cell(ctx, "moslim_best", 1)
        if reused:
            assert c["source"].startswith("demo report") and c["metrics"] == report["policies"]["MOSLIM seed 1"]
        else:
            assert c is None
        print_plan(ctx, {"cells": {}}, [("moslim_best", "1")])  # the duration estimate counts only cells to train
        assert f"{0 if reused else 1} cells to run" in capsys.readouterr().out
    assert not (tmp_path / "a.json").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_rics_fairness_check_counts_the_drawn_samples_and_lets_the_top_up_of_rare_levels_through(demo_dir, tmp_path):
    from bench.demo_ablation import build_demos, build_parser, load_demo_run
    from moslim_plugin import UserError

    report, samples = load_demo_run(demo_dir)
    a = build_parser().parse_args(
        ["--demo_dir", str(demo_dir), "--out", str(tmp_path / "a.json"), "--settings", "moslim"]
    )
    # A top-up's answers (marked with their level) add to RiC's data as to the RM's; the drawn ones match the RL.
    assert set(build_demos(a, report, [*samples, dict(samples[0], top_up="format=1")])) == {"moslim"}
    with pytest.raises(UserError, match="= 8 rollouts but RiC on the demo's 7 drawn samples"):
        build_demos(a, report, samples[1:])


@pytest.mark.integration
@pytest.mark.slow
def test_mapping_settings_train_with_their_own_mapping_and_the_long_setting_logs_a_learning_curve(
    demo_dir, tmp_path, monkeypatch
):
    from bench.demo_ablation import main_run

    out = tmp_path / "mappings.json"
    argv = ["--demo_dir", str(demo_dir), "--seeds", "1", "--out", str(out), "--settings", "mapping_target_logprob",
            "long", "--long_flags", "--demo.rl_steps 4 --demo.curve_every 2 --demo.curve_prompts 1"]  # fmt: skip
    assert main_run(argv) == 0
    result = json.loads(out.read_text())
    mapped, long = result["cells"]["mapping_target_logprob"]["1"], result["cells"]["long"]["1"]
    assert mapped["source"] == "run" and mapped["mapping"] == "target_logprob"  # not the demo's moslim cell
    assert set(mapped["paired"]) == {"starting policy", "RiC", "demo MOSLIM, same seed"}  # the demo ran seed 1
    assert len(mapped["joint_metrics"]["combinations"]) == 12
    # Four RL steps, a curve point at 0 (the starting policy), 2 and 4; the monitor's agreement at every step.
    assert [h["step"] for h in long["history"] if "curve" in h] == [0, 2, 4]
    assert len([h for h in long["history"] if "agree/length" in h]) == 4
    md = out.with_suffix(".md").read_text()
    assert "Learning curve" in md and "RM against the oracle on the RL rollouts" in md and "| long seed 1 |" in md
    assert out.with_name("mappings_curve.png").stat().st_size > 0
    # The docs' regions render from this JSON once it lies in bench/results (the same file serves both here).
    monitor = result["agreement_monitor"]["long seed 1"]
    assert set(monitor) == {"length", "format", "formality"}
    from bench import render_docs

    monkeypatch.setattr(render_docs, "DEMO_REPORT", demo_dir / "report.json")  # measured on the current default
    rendered = render_from(tmp_path, monkeypatch, out, ("demo_mappings", "demo_long"))
    assert not rendered["demo_long"].startswith("Measured on an earlier default run")
    head = mapped["headline"]
    paired = mapped["paired"]["demo MOSLIM, same seed"]["single_accuracy"]
    assert (f"| `target_logprob` | 1 | {head['single_accuracy']['value']:.3f} | {head['joint_accuracy']['value']:.3f}"
            in rendered["demo_mappings"]) and f"1: {paired['diff']:+.3f}" in rendered["demo_mappings"]  # fmt: skip
    assert "--settings mapping_target_logprob long" in rendered["demo_mappings"]
    assert "No verdict: the file has no cells of the demo's mapping." in rendered["demo_mappings"]
    assert f"long seed 1: length {monitor['length']['first']:.3f} -> " in rendered["demo_mappings"]  # the monitor
    curve = [h["curve"]["exact_all_unseen"]["value"] for h in long["history"] if "curve" in h]
    rows = [line for line in rendered["demo_long"].splitlines() if line.startswith(("| 0 |", "| 2 |", "| 4 |"))]
    assert [row.split(" | ")[3].split()[0] for row in rows] == [f"{v:.3f}" for v in curve]
    assert f"length {monitor['length']['first']:.3f} -> {monitor['length']['last']:.3f}" in rendered["demo_long"]


@pytest.mark.integration
@pytest.mark.slow
def test_the_docs_render_each_seed_of_the_default_against_the_starting_policy_and_ric_with_the_targets(
    ablation, demo_dir, tmp_path, monkeypatch
):
    from bench import render_docs
    from moslim_plugin.demo.report import paired_text

    _, out = ablation
    result = json.loads(out.read_text())
    for other in render_docs.RESULTS_DIR.glob("*.json"):  # the README's other rows read theirs
        (tmp_path / other.name).write_bytes(other.read_bytes())
    monkeypatch.setattr(render_docs, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(render_docs, "DEMO_REPORT", tmp_path / "report.json")
    (tmp_path / "report.json").write_bytes((demo_dir / "report.json").read_bytes() + b" ")  # another run's report
    (tmp_path / "demo_mappings.json").write_text(json.dumps(result))
    assert render_docs.run_seeds(render_docs.DEMO_REPORT) is None
    monkeypatch.setattr(render_docs, "DEMO_REPORT", demo_dir / "report.json")
    # The fixture's moslim_best trained two PPO epochs, its demo one: those are not the default's seeds.
    assert render_docs.run_seeds(render_docs.DEMO_REPORT) is None
    assert render_docs.demo_seeds() == f"**Not run yet.** The command: `{render_docs.COMMANDS['demo_seeds']}`."
    assert render_docs.demo_mappings().startswith("**Not run yet.**")  # no mapping_* cell in the file
    # Its `moslim` cells are the demo's own flags (seed 1 the demo's policy): rendered as the default's seeds.
    result["cells"]["moslim_best"] = cells = result["cells"]["moslim"]
    (tmp_path / "demo_mappings.json").write_text(json.dumps(result))
    text = render_docs.demo_seeds()
    for seed, c in cells.items():
        ref = c["paired"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {seed} |"))
        assert row.endswith(f"| {paired_text(ref['starting policy']['exact_all_unseen'])} | "
                            f"{paired_text(ref['RiC']['exact_all_unseen'])} | "
                            f"{paired_text(ref['starting policy']['exact_all_seen'])} | "
                            f"{paired_text(ref['starting policy']['single_accuracy'])} |")  # fmt: skip
    gains = [c["paired"]["starting policy"]["exact_all_unseen"] for c in cells.values()]
    met = sum(g["diff"] >= 0.10 and g["ci95"][0] > 0 for g in gains)
    assert f"the paired interval above 0: {'met' if met == 2 else '**not met**'} ({met} of 2 seeds)" in text
    mean = sum(c["metrics"]["mean"]["accuracy"] for c in cells.values()) / 2
    assert f"(mean over MOSLIM seeds) >= 0.80: {'met' if mean >= 0.80 else '**not met**'} ({mean:.3f})" in text
    # The rarest level of each seed's rollouts, from its logged per-step shares (seed 1: the demo's report's).
    rarest = next(line for line in text.splitlines() if line.startswith("- The rarest level per seed (all RL"))
    assert "bar: 15 %): seed 1 " in rarest and "; seed 2 " in rarest
    # The demo's own section and the README's row point at / judge over both seeds.
    assert "- Seeds 1, 2 on this run's RM and flags" in render_docs.demo_joint()
    assert "; ".join(paired_text(g) for g in gains) in render_docs.readme_results()


def render_from(tmp_path, monkeypatch, result, names) -> dict:
    """Render the docs regions `names` from `result` copied in as each one's results file."""
    from bench import render_docs

    monkeypatch.setattr(render_docs, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir(exist_ok=True)
    for name in names:
        (tmp_path / "results" / f"{name}.json").write_text(result.read_text())
    return {name: render_docs.RENDERERS[name]() for name in names}


@pytest.mark.unit
def test_a_docs_region_whose_run_has_not_been_made_says_so_with_its_command(tmp_path, monkeypatch):
    from bench import render_docs

    monkeypatch.setattr(render_docs, "DEMO_REPORT", tmp_path / "report.json")
    assert "| demo, joint requests (the current default) | not run yet |" in render_docs.readme_results()
    monkeypatch.setattr(render_docs, "RESULTS_DIR", tmp_path)
    for name in ("demo_joint", "demo_long", "demo_mappings", "demo_seeds", "numeral_probe"):
        assert render_docs.RENDERERS[name]() == f"**Not run yet.** The command: `{render_docs.COMMANDS[name]}`."


@pytest.mark.unit
def test_an_ablation_measured_on_an_earlier_default_run_links_that_runs_report_and_an_unknown_run_fails(
    tmp_path, monkeypatch
):
    import hashlib

    from bench import render_docs

    earlier = sorted((render_docs.ROOT / "docs/demo").glob("*/report.json"))[0]
    digest = hashlib.sha256(earlier.read_bytes()).hexdigest()[:16]
    text = render_docs.measured_on({"inputs": {"demo_report_sha256": digest}})
    assert text.startswith("Measured on an earlier default run") and f"(demo/{earlier.parent.name}/report.md)" in text
    monkeypatch.setattr(render_docs, "DEMO_REPORT", earlier)  # the current default's own run: nothing to say
    assert render_docs.measured_on({"inputs": {"demo_report_sha256": digest}}) == ""
    with pytest.raises(ValueError, match="no report under docs/demo/ has the digest 0123456789abcdef"):
        render_docs.measured_on({"inputs": {"demo_report_sha256": "0123456789abcdef"}})


@pytest.mark.integration
@pytest.mark.slow
def test_the_docs_render_a_joint_demo_report_with_each_target_met_or_not(demo_dir, tmp_path, monkeypatch):
    from bench import render_docs
    from bench.numeral_probe import main_run as numeral_probe
    from moslim_plugin.demo.report import paired_text

    monkeypatch.setattr(render_docs, "DEMO_REPORT", demo_dir / "report.json")
    monkeypatch.setattr(render_docs, "MAKE_DEMO_REPORT", tmp_path / "make_demo" / "report.json")  # not timed yet
    report = json.loads((demo_dir / "report.json").read_text())
    s = report["summary"]
    text, readme = render_docs.demo_joint(), render_docs.readme_results()
    gain, single = s["targets"]["unseen_exact_all_gain"], s["targets"]["single_accuracy"]
    verdict = {True: "met", False: "**not met**"}
    assert (
        f"exact-all rate >= the starting policy's + 0.10, the paired interval above 0: {verdict[gain['met']]}" in text
    )
    assert f"MOSLIM seeds) >= 0.80: {verdict[single['met']]} ({single['value']:.3f})" in text
    assert "`make demo` (one seed) <= 30 min on 2 idle cores: not measured yet" in text
    assert "| `make demo` (one seed) on 2 idle cores | not timed yet |" in readme
    # Once `make demo`'s own report is in place: its time judged, by stage, with its own seed's paired gains.
    made = tmp_path / "make_demo" / "report.json"
    made.parent.mkdir()
    made.write_text((demo_dir / "report.json").read_text())
    monkeypatch.setattr(render_docs, "MAKE_DEMO_REPORT", made)
    minutes, own = report["timings_s"]["total"] / 60, s["paired"]["MOSLIM seed 1"]["starting policy"]
    timed = render_docs.demo_joint()
    assert f"2 idle cores: {verdict[minutes <= 30]} ({minutes:.1f} min: sample " in timed
    assert f"single-objective acc {paired_text(own['single_accuracy'])}, unseen exact-all " in timed
    assert f"{paired_text(own['exact_all_unseen'])}; hacking monitor, too few RL steps to compare" in timed  # one step
    assert "this run took" in timed
    row = f"| `make demo` (one seed) on 2 idle cores, target 30 min | {minutes:.1f} min: {verdict[minutes <= 30]} |"
    assert row in render_docs.readme_results()
    # A timing of a run without the top-up, now the default's, says it was timed before it.
    made.write_text(json.dumps({**report, "summary": {**s, "sample_top_up": None}}))
    assert "; timed before the default topped up its samples |" in render_docs.readme_results()
    made.write_text((demo_dir / "report.json").read_text())
    # When the run itself is `make demo`'s, timed: its own time, once.
    monkeypatch.setattr(render_docs, "MAKE_DEMO_REPORT", demo_dir / "report.json")
    timed = render_docs.demo_joint()
    assert f"({minutes:.1f} min: sample " in timed and "this run is `make demo`'s own command" in timed
    assert "this run took" not in timed
    assert "The 3-seed evidence run has not been run yet" in text  # this run has one seed
    assert "(first -> last quarter of the RL steps): too few RL steps to compare" in text  # one RL step
    d = s["paired"]["MOSLIM seed 1"]["starting policy"]["exact_all_unseen"]
    assert f"{d['diff']:+.3f}" in readme and f"{single['value']:.3f} (target 0.80: {verdict[single['met']]})" in readme
    # The fooling test on this run's RM: every short sample with each numeral appended and prepended.
    out = tmp_path / "numeral_probe.json"
    assert (
        numeral_probe(["--demo_dir", str(demo_dir), "--numerals", "1", "3", "--threads", "1", "--out", str(out)]) == 0
    )
    r = next(iter(json.loads(out.read_text())["results"].values()))
    assert r["short_answers"] > 0 and r["edited_answers"] == r["short_answers"] * 3 * 2
    assert r["length_macro_f1_heldout"] == s["rm_eval"]["length"]["macro_f1"]
    probe = render_from(tmp_path, monkeypatch, out, ("numeral_probe",))["numeral_probe"]
    assert f"changed for **{r['changed']}** ({100 * r['changed_share']:.2f} %" in probe
    assert f"target <= 1 %: {verdict[r['changed_share'] <= 0.01]}" in probe


@pytest.mark.integration
@pytest.mark.slow
def test_ric_grid_picks_the_best_validation_accuracy_and_ric_uses_it(ablation):
    _, out = ablation
    result = json.loads(out.read_text())
    grid = result["ric_grid"]
    assert len(grid["trials"]) == 2 and len(grid["val_prompts"]) == 1
    scores = {k: t["val_accuracy"] for k, t in grid["trials"].items()}
    assert scores[grid["chosen"]] == max(scores.values())
    assert grid["chosen"] == next(k for k, v in scores.items() if v == max(scores.values()))  # first on a tie
    chosen = grid["trials"][grid["chosen"]]
    for c in result["cells"]["ric"].values():
        assert (c["epochs"], c["lr"]) == (chosen["epochs"], chosen["lr"])
    # Held-back prompts are really held back: the grid trained on fewer samples than the demo drew.
    assert grid["train_samples"] < 8


@pytest.mark.integration
@pytest.mark.slow
def test_rerun_skips_finished_cells_keeps_their_machine_and_refuses_other_inputs(ablation, capsys):
    from bench.demo_ablation import main_run

    argv, out = ablation
    first = json.loads(out.read_text())
    before = first["cells"]
    capsys.readouterr()
    assert main_run(argv) == 0
    printed = capsys.readouterr().out
    rerun = json.loads(out.read_text())
    assert rerun["cells"] == before  # nothing re-measured (wall seconds included)
    # The cells keep the machine (date, threads) they were measured on; the rerun is recorded beside it.
    assert rerun["machine"] == first["machine"] and len(rerun["resumed_on"]) == 1 + len(first.get("resumed_on", []))
    assert printed.count("skip ") == 2 + 3 * 2  # two base cells, three trained settings x two seeds
    with pytest.raises(UserError, match="best_flags: '--train.max_epochs 2' there, '--train.max_epochs 3' now"):
        main_run([*argv, "--best_flags", "--train.max_epochs 3"])
    assert json.loads(out.read_text())["cells"] == before


@pytest.mark.integration
@pytest.mark.slow
def test_ablation_refuses_a_demo_whose_ric_and_rl_sample_counts_differ(demo_dir, tmp_path):
    from bench.demo_ablation import main_run

    # The same demo run, but MOSLIM with 8 samples per prompt would see 16 rollouts against RiC's 8 samples.
    argv = ["--demo_dir", str(demo_dir), "--out", str(tmp_path / "a.json"), "--settings", "moslim_best",
            "--best_flags", "--rollout.n_samples_per_prompt 8"]  # fmt: skip
    with pytest.raises(UserError, match="= 16 rollouts but RiC on the demo's 8 drawn samples"):
        main_run(argv)
    assert not (tmp_path / "a.json").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_rm_check_rebuilds_the_demo_rms_held_out_split_and_scores_it_as_train_rm_did(demo_dir, tmp_path):
    """bench/demo_rm_check.py: its heldout_edits rows are the ones the demo's RM stage held out (so its macro-F1 is
    the one train-rm wrote), heldout_samples are those questions' samples alone, base_answers the base evaluation's."""
    from bench.demo_rm_check import main_run

    base_eval = next(demo_dir.glob("eval_base_*.json"))
    out = tmp_path / "check.json"
    argv = ["--samples", str(demo_dir / "samples.jsonl"), "--rms", str(demo_dir / "rm"), "--base_eval", str(base_eval)]
    assert main_run([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    trained = json.loads((demo_dir / "rm" / "eval_metrics.json").read_text())
    assert result["rows"]["heldout_edits"] == trained["eval_rows"]
    scores = result["macro_f1"][str(demo_dir / "rm")]
    assert scores["heldout_edits"] == {n: round(m["macro_f1"], 4) for n, m in trained["metrics"].items()}
    rows = result["rows"]
    assert 0 < rows["heldout_samples"] < rows["heldout_edits_no_pairs"] <= rows["heldout_edits"]
    assert rows["heldout_edits_no_pairs"] == 5 * rows["heldout_samples"]  # each sample and its four edits
    assert result["rows"]["base_answers"] == len(json.loads(base_eval.read_text())["samples"])
    assert "| reward model |" in out.with_suffix(".md").read_text()


@pytest.mark.unit
def test_length_pairs_straddle_every_length_band_crossing_of_a_sample():
    from bench.demo_rm_check import length_pairs
    from moslim_plugin.demo.oracle import demo_spec

    long = {"question": "q", "response": " ".join(f"word{i}" for i in range(40))}
    pairs = length_pairs([long, {"question": "q", "response": "Too short to cross a band."}], demo_spec())
    assert [(len(r["response"].split()), r["labels"]["length"]) for r in pairs] == [(20, 0), (21, 1), (32, 1), (33, 2)]
    assert all(r["question"] == "q" and r["edit"] == "pair" for r in pairs)


@pytest.mark.integration
@pytest.mark.slow
def test_rm_check_trains_the_variant_asked_on_the_demo_rm_stages_rows_and_split(demo_dir, tmp_path):
    """--train: the demo's RM stage with one setting changed (here the pooling), held out exactly as the stage holds
    out, so train-rm's own macro-F1 is the check's heldout_edits score."""
    from bench.demo_rm_check import main_run

    rm, out = tmp_path / "rm_cls", tmp_path / "check.json"
    argv = ["--samples", str(demo_dir / "samples.jsonl"), "--train", str(rm), "--train_pooling", "cls",
            "--train_epochs", "1", "--out", str(out)]  # fmt: skip
    assert main_run(argv) == 0
    assert json.loads((rm / "config.json").read_text())["moslim"]["pooling"] == "cls"
    result, trained = json.loads(out.read_text()), json.loads((rm / "eval_metrics.json").read_text())
    assert result["trained"]["eval_rows"] == result["rows"]["heldout_edits"] == trained["eval_rows"]
    assert result["macro_f1"][str(rm)]["heldout_edits"] == {
        n: round(m["macro_f1"], 4) for n, m in trained["metrics"].items()
    }


def mapping_cells(values: dict, flags=None) -> dict:
    """Ablation cells by setting and seed with the given (single acc, unseen exact-all) per seed, per mapping."""
    settings = {"moslim": "moslim_best", "expected_level": "mapping_expected_level",
                "target_logprob": "mapping_target_logprob"}  # fmt: skip
    return {settings[mapping]: {str(seed): {
        "mapping": mapping, "rl_flags": (flags or {}).get(mapping, {"train.max_epochs": 2}),
        "headline": {"single_accuracy": {"value": single}, "exact_all_unseen": {"value": unseen}},
    } for seed, (single, unseen) in enumerate(per_seed, 1)} for mapping, per_seed in values.items()}  # fmt: skip


@pytest.mark.unit
def test_a_mapping_replaces_the_demos_only_when_all_its_seeds_beat_all_of_the_defaults_and_it_loses_nowhere():
    from bench.demo_ablation import mapping_verdict, verdict_text

    default = [(0.70, 0.10), (0.72, 0.12), (0.74, 0.14)]
    better = [(0.75, 0.13), (0.76, 0.14), (0.77, 0.15)]  # every seed above on single acc, mean unseen 0.14 >= 0.12
    v = mapping_verdict(mapping_cells({"moslim": default, "expected_level": better}), "moslim")
    assert v["best"] == "expected_level" and v["seeds"] == ["1", "2", "3"]
    assert v["seeds_apart_above_default"]["expected_level"] == {"single_accuracy": True, "exact_all_unseen": False}
    assert v["mean"]["moslim"]["single_accuracy"] == pytest.approx(0.72)
    assert "**`expected_level` trains control best**" in verdict_text(v)
    overlapping = [(0.73, 0.13), (0.76, 0.14), (0.77, 0.15)]  # one seed below the default's best seed (0.74)
    worse_elsewhere = [(0.75, 0.05), (0.76, 0.06), (0.77, 0.07)]  # above on single acc, lower unseen mean
    for other in (overlapping, worse_elsewhere):
        v = mapping_verdict(mapping_cells({"moslim": default, "target_logprob": other}), "moslim")
        assert v["best"] == "moslim"
        assert "**`moslim` stays the demo's mapping**" in verdict_text(v)
    # Nothing to compare until another mapping sits beside the demo's.
    assert mapping_verdict(mapping_cells({"moslim": default}), "moslim") is None
    assert mapping_verdict(mapping_cells({"expected_level": better}), "moslim") is None
    # Mappings trained with other RL flags are not the same budget: refused, naming them.
    flags = {"moslim": {"train.max_epochs": 1}, "expected_level": {"train.max_epochs": 2}}
    with pytest.raises(UserError, match=r"\['expected_level', 'moslim'\] were trained with different RL flags"):
        mapping_verdict(mapping_cells({"moslim": default, "expected_level": better}, flags), "moslim")


@pytest.mark.unit
def test_the_demos_default_mapping_is_the_one_the_committed_mapping_ablation_measured_best():
    from bench.render_docs import RESULTS_DIR
    from moslim_plugin.demo.pipeline import build_parser

    verdict = json.loads((RESULTS_DIR / "demo_mappings.json").read_text())["summary"]["mapping"]
    assert set(verdict["mean"]) == {"moslim", "expected_level", "target_logprob"}
    assert build_parser().get_default("moslim.mapping") == verdict["best"]
