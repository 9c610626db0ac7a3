"""bench/compare_demo_runs.py: two demo runs (learned heads vs --demo.rules) compared on the same answers, and the
docs/rules.md region it feeds. The run folders are written here in the demo's own report format (report.json,
eval_samples.json), small enough to check the paired differences by hand."""

import json

import pytest

from bench import compare_demo_runs, render_docs

NAMES = ("length", "format", "formality")
PROMPTS = [f"question {i}" for i in range(8)]
SETTINGS = {"size": {"samples": 8}, "preset": "full", "device": "cpu", "seeds": [1], "mapping": "moslim",
            "rl_flags": {}, "policy": "smollm2", "heldout_prompts": 8, "placement": "user_suffix",
            "style": "natural", "sampling": "subset", "request_weights": {},
            "unseen": [{"length": 0, "format": 1, "formality": 1}]}  # fmt: skip


def write_run(folder, rules, length_hit):
    """A finished demo run: every policy answers each prompt under one single-objective request per objective and
    one full request; the MOSLIM policy hits `length` on the first `length_hit` prompts, everything else always."""
    samples = {}
    for policy in ("base", "RiC SFT", "MOSLIM seed 1"):
        rows = []
        for i, prompt in enumerate(PROMPTS):
            for request in (*({n: level} for n, level in zip(NAMES, (2, 1, 0))), dict(zip(NAMES, (2, 0, 1)))):
                achieved = {"length": 2, "format": 1, "formality": 0} | dict(request)
                if policy == "MOSLIM seed 1" and i >= length_hit:
                    achieved["length"] = 0
                rows.append({"prompt": prompt, "request": request, "response": "r", "achieved": achieved})
        samples[policy] = rows
    agreement = {n: {"accuracy": 1.0, "macro_f1": 1.0} for n in NAMES}
    report = {
        "settings": {**SETTINGS, "rules": rules},
        "timings_s": {"total": 600.0},
        "policies": {p: {"rm_agreement": agreement} for p in samples},
        "summary": {"agreement_monitor": {"MOSLIM seed 1": {n: {"first": 0.9, "last": 0.8, "falling": True}
                                                            for n in NAMES}},
                    "rm_eval": {n: {"macro_f1": 0.9} for n in NAMES if n not in rules}},
    }  # fmt: skip
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "eval_samples.json").write_text(json.dumps(samples))
    return folder


@pytest.mark.unit
def test_rules_run_gaining_length_shows_a_positive_paired_difference_on_length_only(tmp_path, capsys):
    a = write_run(tmp_path / "learned", [], length_hit=2)
    b = write_run(tmp_path / "rules", ["length", "format"], length_hit=8)
    out = tmp_path / "demo_rules.json"
    assert compare_demo_runs.main_run(["--a", str(a), "--b", str(b), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    moslim = result["b_minus_a"]["MOSLIM seed 1"]
    assert moslim["length"]["diff"] == pytest.approx(6 / 8)  # 2 of 8 prompts hit length in a, 8 of 8 in b
    assert moslim["length"]["ci95"][0] > 0
    assert moslim["format"] == {"diff": 0.0, "ci95": [0.0, 0.0]}
    assert moslim["single_accuracy"]["diff"] == pytest.approx(6 / 8 / 3)  # the mean over the three objectives
    assert result["b_minus_a"]["base"]["single_accuracy"]["diff"] == 0.0
    assert result["headline"]["b"]["MOSLIM seed 1"]["length"] == 1.0
    assert out.with_suffix(".png").stat().st_size > 0
    text = render_docs.demo_rules(out)
    assert "rules for length, format" in text and "Not measured" not in text
    assert "| MOSLIM seed 1 | 0.750 / 1.000 | +0.250 [" in text
    assert text in out.with_suffix(".md").read_text()


@pytest.mark.unit
def test_runs_differing_in_more_than_their_rules_are_refused(tmp_path):
    a = write_run(tmp_path / "learned", [], length_hit=2)
    b = write_run(tmp_path / "rules", ["length"], length_hit=8)
    report = json.loads((b / "report.json").read_text())
    report["settings"]["seeds"] = [2]
    (b / "report.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit, match=r"differ in \['seeds'\]"):
        compare_demo_runs.main_run(["--a", str(a), "--b", str(b), "--out", str(tmp_path / "x.json")])


@pytest.mark.unit
def test_without_the_comparison_the_rules_page_says_it_was_not_measured_and_gives_the_commands(tmp_path):
    text = render_docs.demo_rules(tmp_path / "missing.json")
    assert text.startswith("**Not measured yet.**")
    assert "--demo.rules length,format" in text and "python -m bench.compare_demo_runs" in text
