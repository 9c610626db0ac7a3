"""`moslim-openrlhf screen` on the real bundled policy (tiny sizes): every output, for every condition."""

import json

import pytest


@pytest.mark.integration
@pytest.mark.slow
def test_screen_writes_level_rates_and_gaps_per_objective_style_and_placement(tmp_path):
    from moslim_plugin.demo.screen import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a fruit.\nWhat is rain?\n")
    argv = ["--eval.dataset", str(prompts), "--eval.n_samples_per_prompt", "1", "--rollout.max_new_tokens", "4",
            "--screen.oracle_objectives", "length", "format", "--screen.placements", "system", "user_suffix",
            "--screen.output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "screening.json").read_text())
    assert report["settings"]["judge"] == "oracle" and report["settings"]["prompts"] == 2
    conditions = {f"{s}/{p}" for s in ("natural", "tagged") for p in ("system", "user_suffix")}
    assert set(report["conditions"]) == conditions
    for condition in report["conditions"].values():
        assert set(condition) == {"length", "format"}
        length = condition["length"]
        for mode in ("greedy", "sampled"):
            assert set(length[mode]["rates"]) == {"0", "1", "2"}  # the rates under each of the 3 requests
            for rates in length[mode]["rates"].values():
                assert sum(rates) == pytest.approx(1.0)
            assert -1.0 <= length[mode]["gap"] <= 1.0
        assert sum(length["sampled_share"]) == pytest.approx(1.0)
        # 4 new tokens never make a long answer or a list: the objective cannot pass.
        assert length["passes"] is False and condition["format"]["passes"] is False
    md = (tmp_path / "out" / "screening.md").read_text()
    assert "| length |" in md and "natural / user_suffix" in md
    assert (tmp_path / "out" / "screening.png").stat().st_size > 0
