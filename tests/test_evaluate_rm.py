import json

import pytest
import torch

from moslim_plugin.cli import main as cli
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.evaluate_rm import bootstrap_ci, pairwise_accuracy

SPEC = load_spec("hh")


@pytest.mark.unit
def test_pairwise_accuracy_counts_a_tie_as_half_and_reports_it():
    result = pairwise_accuracy([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, 1.0])  # win, tie, loss, win
    assert result["n"] == 4 and result["ties"] == 1 and result["accuracy"] == pytest.approx(2.5 / 4)
    lo, hi = result["ci95"]
    assert 0 <= lo <= result["accuracy"] <= hi <= 1


@pytest.mark.unit
def test_bootstrap_interval_narrows_with_more_items():
    few, many = bootstrap_ci([1.0, 0.0] * 10), bootstrap_ci([1.0, 0.0] * 500)
    assert few[0] < many[0] < 0.5 < many[1] < few[1]


@pytest.fixture(scope="module")
def untrained_rm(tmp_path_factory, tiny_bert):
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rm")
    MultiHeadRewardModel.from_backbone(tiny_bert, SPEC).save_pretrained(path, AutoTokenizer.from_pretrained(tiny_bert))
    return path


@pytest.mark.integration
def test_scorer_classifies_without_a_request_exactly_as_score_does(untrained_rm):
    from moslim_plugin.core.scorer import Scorer

    scorer = Scorer.from_pretrained(untrained_rm, batch_size=2)
    questions, responses = ["hi?", "how are you doing today?", "why?"], ["hello", "fine", "because it is"]
    probs = scorer.classify(questions, responses)
    assert probs.shape == (3, 2, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2))
    torch.testing.assert_close(probs, scorer.score(questions, responses, [{"helpful": 1}] * 3).probs)


@pytest.mark.integration
def test_evaluate_rm_on_a_ratings_file_writes_per_head_metrics_baselines_and_a_plot(tmp_path, untrained_rm, capsys):
    rows = [
        {"question": f"q{i}", "response": "sure" if i % 3 else "no", "labels": {"helpful": int(i % 3 > 0)}}
        for i in range(12)
    ]
    rows[0]["labels"]["harmless"] = 1
    data = tmp_path / "ratings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    assert (
        cli(["evaluate-rm", "--model", str(untrained_rm), "--data.dataset", str(data), "--output_dir", str(out)]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    helpful = report["heads"]["helpful"]
    assert helpful["n"] == 12 and helpful["majority_accuracy"] == pytest.approx(8 / 12)
    assert sum(map(sum, helpful["confusion"])) == 12 and len(helpful["confusion"]) == 2
    assert {"accuracy", "macro_f1", "mae", "ece", "nll", "prior_nll", "accuracy_ci95"} <= set(helpful)
    assert report["heads"]["harmless"]["n"] == 1
    assert "| helpful | 12 |" in (out / "report.md").read_text() and (out / "report.png").stat().st_size > 1000
    assert "| helpful | 12 |" in capsys.readouterr().out


@pytest.mark.integration
def test_evaluate_rm_on_hh_dialogue_pairs_scores_both_sides_through_the_mapping(tmp_path, untrained_rm):
    pairs = [
        {
            "chosen": f"\n\nHuman: q{i}?\n\nAssistant: a helpful answer {i}",
            "rejected": f"\n\nHuman: q{i}?\n\nAssistant: no",
        }
        for i in range(6)
    ]
    data = tmp_path / "helpful-base-test.jsonl"  # HH-RLHF file name: the request defaults to helpful=1
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "eval"
    assert (
        cli(["evaluate-rm", "--model", str(untrained_rm), "--data.dataset", str(data), "--output_dir", str(out)]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "pairs" and report["request"] == {"helpful": 1} and report["pairs"]["n"] == 6
    assert 0 <= report["pairs"]["accuracy"] <= 1 and (out / "report.png").is_file()
    # Same pairs with the chosen side duplicated as rejected: every pair is a tie, accuracy exactly 0.5.
    ties = tmp_path / "ties.jsonl"
    ties.write_text("".join(json.dumps({"question": "q", "chosen": "x", "rejected": "x"}) + "\n" for _ in range(4)))
    assert cli(["evaluate-rm", "--model", str(untrained_rm), "--data.dataset", str(ties), "--output_dir", str(out),
                "--moslim.request", "harmless=1"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"]["ties"] == 4 and report["pairs"]["accuracy"] == 0.5
