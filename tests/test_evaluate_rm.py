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
def test_evaluate_rm_reports_a_rule_objective_as_exact_agreement_with_the_labels(tmp_path, tiny_bert):
    """A mixed checkpoint, and the spec file of its rule alone as --model: no NLL or ECE for the rule, its
    accuracy is how often the labels agree with it."""
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel

    rule = {"name": "listed", "levels": 2, "rule": "bulleted_list"}
    mixed = load_spec({"objectives": [SPEC.objectives[0].to_dict(), rule]})
    rm = tmp_path / "rm"
    MultiHeadRewardModel.from_backbone(tiny_bert, mixed).save_pretrained(rm, AutoTokenizer.from_pretrained(tiny_bert))
    rules_only = tmp_path / "rules.json"
    rules_only.write_text(json.dumps({"objectives": [rule]}))
    responses = ["- a\n- b", "- a\n- b", "one line", "one line"]
    rows = [{"question": "q", "response": r, "labels": {"listed": label}} for r, label in zip(responses, [1, 0, 0, 0])]
    data = tmp_path / "ratings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for model in (rm, rules_only):
        out = tmp_path / f"eval-{model.name}"
        assert cli(["evaluate-rm", "--model", str(model), "--data.dataset", str(data), "--output_dir", str(out)]) == 0
        listed = json.loads((out / "report.json").read_text())["heads"]["listed"]
        assert listed["exact"] is True and listed["rule"] == {"name": "bulleted_list", "min_items": 2}
        assert listed["n"] == 4 and listed["accuracy"] == 0.75 and listed["confusion"] == [[2, 1], [0, 1]]
        assert not {"nll", "ece", "prior_nll"} & set(listed)
        assert "| listed (exact: rule bulleted_list) | 4 | 0.750 [" in (out / "report.md").read_text()


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


@pytest.mark.integration
def test_evaluate_rm_checks_every_pairs_request_before_loading_the_model(tmp_path, untrained_rm, capsys):
    import shutil

    # Weights that cannot be read: any error below that is not about the weights came before the model was loaded.
    broken = tmp_path / "broken-rm"
    shutil.copytree(untrained_rm, broken)
    (broken / "model.safetensors").write_bytes(b"cut short")
    dialogue = {"chosen": "\n\nHuman: q?\n\nAssistant: yes", "rejected": "\n\nHuman: q?\n\nAssistant: no"}

    def error(name, rows, *flags):
        data = tmp_path / name
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert cli(["evaluate-rm", "--model", str(broken), "--data.dataset", str(data), *flags]) == 2
        return capsys.readouterr().err

    err = error("test.jsonl", [dialogue])  # HH-RLHF pairs under a name that does not say the subset
    assert "test.jsonl: row 0: no request to score the pair for" in err and "--moslim.request" in err
    err = error("test.jsonl", [dialogue], "--moslim.request", "tone=1")
    assert "row 0: the request from --moslim.request: unknown objective 'tone'" in err
    err = error("test.jsonl", [dialogue, {**dialogue, "request": {"helpful": 2}}], "--moslim.request", "helpful=1")
    assert "row 1: the request from its 'request': level 2 for 'helpful' is out of range" in err
    assert "weights" not in capsys.readouterr().err
    # A good request gets as far as the model, whose weights are then what fails.
    assert "the weights cannot be read" in error("harmless-base-test.jsonl", [dialogue])


@pytest.mark.unit
def test_evaluate_rm_help_says_how_a_pairs_request_is_found(capsys):
    with pytest.raises(SystemExit):
        cli(["evaluate-rm", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert 'the row\'s own `"request"`' in text and "else `--moslim.request`" in text
    assert "helpful*/harmless*" in text and "before the model is loaded" in text


@pytest.mark.integration
def test_evaluate_rm_threads_sets_the_torch_threads_it_scores_with(tmp_path, untrained_rm):
    rows = [{"question": "q", "response": "r", "labels": {"helpful": 1}}] * 2
    data = tmp_path / "ratings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    try:
        assert (
            cli(["evaluate-rm", "--model", str(untrained_rm), "--data.dataset", str(data), "--threads", str(wanted)])
            == 0
        )
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
