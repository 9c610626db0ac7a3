"""Rule objectives: built-in and custom rules, their validation in the spec, and their exact reward in the Scorer."""

import math

import pytest
import torch
from helpers_models import tiny_llama_config
from helpers_reward import MIXED_SPEC
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, LlamaModel

from moslim_plugin.core.mappings import BUILTIN_MAPPINGS, MappingStats, moslim
from moslim_plugin.core.rm import MultiHeadRewardModel
from moslim_plugin.core.rules import count_sentences
from moslim_plugin.core.scorer import Scorer, encode
from moslim_plugin.core.spec import SpecError, load_spec

RULES = {
    "objectives": [
        {"name": "length", "levels": 3, "rule": {"name": "word_count", "bands": [20, 32]}},
        {"name": "format", "levels": 2, "rule": "bulleted_list"},
        {"name": "sentences", "levels": 3, "rule": {"name": "sentence_count", "bands": [1, 3]}},
        {"name": "sources", "levels": 2, "rule": {"name": "regex", "pattern": r"(?i)\bsource:"}},
    ]
}


def words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


def model_probs(model, tokenizer, question, response):
    ids = torch.tensor([encode(tokenizer, question, response, 512)["input_ids"]])
    with torch.no_grad():
        return model(ids, torch.ones_like(ids)).softmax(-1)[0]


def rule_levels(spec, response, question="Why?"):
    return {o.name: o.level(question, response) for o in spec.objectives}


@pytest.mark.unit
def test_built_in_rules_give_the_exact_level_of_a_response():
    spec = load_spec(RULES)
    assert rule_levels(spec, words(20)) == {"length": 0, "format": 0, "sentences": 0, "sources": 0}
    assert rule_levels(spec, words(21))["length"] == 1 and rule_levels(spec, words(33))["length"] == 2
    listed = "Three things:\n- first one\n- second one\n1. a numbered third\nSource: a book"
    assert rule_levels(spec, listed) == {"length": 0, "format": 1, "sentences": 2, "sources": 1}  # 5 lines
    assert rule_levels(spec, "Only one:\n- item")["format"] == 0  # one bullet line is not a list
    assert rule_levels(spec, "It costs 3.5 dollars. Cheap! Or not? Yes.")["sentences"] == 2  # 4 sentences
    assert rule_levels(spec, "It costs 3.5 dollars. Cheap!")["sentences"] == 1  # 2 sentences


@pytest.mark.unit
def test_sentences_end_at_terminal_punctuation_or_a_line_break_and_list_markers_are_not_sentences():
    assert count_sentences("Pi is 3.14, roughly. That is all") == 2
    assert count_sentences("- apples\n- pears\n\n2) plums") == 3
    assert count_sentences("...") == 0 and count_sentences("") == 0
    assert count_sentences('He said "stop." Then left.') == 2


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "quickly"]), min_size=0, max_size=60),
    st.data(),
)
def test_a_numeral_cannot_move_a_word_count_rule(plain_words, data):
    """The learned length head read a "21" in a short answer as a 21st word; the rule counts a numeral as one
    word, whatever its value, so replacing any words by numerals never changes the level."""
    length = load_spec(RULES).objectives[0]
    numerals = st.sampled_from(["21", "33", "1000", "2.", "3)", "#40"])
    swapped = [data.draw(numerals) if data.draw(st.booleans()) else w for w in plain_words]
    assert length.level("q", " ".join(swapped)) == length.level("q", " ".join(plain_words))
    assert length.level("q", " ".join(plain_words)) == (len(plain_words) > 20) + (len(plain_words) > 32)


@pytest.mark.unit
@pytest.mark.parametrize(
    "rule, levels, message",
    [
        ("word_cunt", 3, r"unknown rule 'word_cunt'; installed: built-in: \['bulleted_list', 'regex', 'sentence"),
        ({"name": "word_count", "bands": [20]}, 3, r"'bands': expected 2 strictly ascending word counts"),
        ({"name": "sentence_count", "bands": [3, 1]}, 3, r"'bands': expected 2 strictly ascending sentence counts"),
        ({"name": "word_count"}, 3, r"takes the parameters \['bands'\], got \[\]"),
        ({"name": "regex", "pattern": "(unclosed"}, 2, r"'\(unclosed' is not a valid regular expression"),
        ({"name": "regex", "pattern": "x"}, 3, r"this rule has 2 levels \(0: no, 1: yes\), but the objective has 3"),
        ({"name": "bulleted_list", "min_lines": 3}, 2, r"takes the parameters \['min_items'\], got \['min_lines'\]"),
        ("no_such_module:f", 2, r"rule 'no_such_module:f': cannot import module 'no_such_module'"),
        ("helpers_reward:NOT_THERE", 2, r"module 'helpers_reward' has no function 'NOT_THERE'"),
        ({"name": "helpers_reward:asks_back", "bogus": 1}, 2, r"rule 'helpers_reward:asks_back' takes the param"),
        (["word_count"], 3, r"expected a rule name or a mapping \{name: RULE, <parameters>\}"),
    ],
)
def test_a_bad_rule_is_a_one_line_spec_error_naming_the_objective(rule, levels, message):
    with pytest.raises(SpecError, match=message) as error:
        load_spec({"objectives": [{"name": "good", "levels": 2}, {"name": "tone", "levels": levels, "rule": rule}]})
    assert "objectives[1] ('tone'): field 'rule'" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.unit
def test_a_rule_objective_has_no_rating():
    with pytest.raises(SpecError, match="a rule objective is checked exactly and has no rating"):
        load_spec({"objectives": [{"name": "format", "levels": 2, "rule": "bulleted_list", "rating": {"path": "f"}}]})


@pytest.mark.unit
def test_the_fingerprint_covers_rules_but_not_how_their_defaults_are_written():
    def spec(**rule):
        return load_spec({"objectives": [{"name": "format", "levels": 2, "rule": rule or "bulleted_list"}]})

    assert spec().fingerprint == spec(name="bulleted_list", min_items=2).fingerprint
    assert spec().fingerprint != spec(name="bulleted_list", min_items=3).fingerprint
    learned = load_spec({"objectives": [{"name": "format", "levels": 2}]})
    assert learned.fingerprint != spec().fingerprint
    assert "rule" not in learned.to_dict()["objectives"][0]  # specs without rules keep their fingerprints
    assert load_spec(spec().to_dict()).objectives == spec().objectives  # the canonical form round-trips


@pytest.mark.unit
def test_a_custom_rule_is_module_function_called_with_its_parameters():
    spec = load_spec({"objectives": [{"name": "asks", "levels": 2, "rule": {"name": "helpers_reward:asks_back"}}]})
    assert spec.objectives[0].rule == {"name": "helpers_reward:asks_back"}
    assert spec.objectives[0].level("Hi", "What do you mean?") == 1 and spec.objectives[0].level("Hi", "Hi.") == 0
    rule = {"name": "helpers_reward:asks_back", "min_questions": 2}
    strict = load_spec({"objectives": [{"name": "asks", "levels": 2, "rule": rule}]})
    assert strict.objectives[0].level("Hi", "What do you mean?") == 0
    assert strict.objectives[0].level("Hi", "What? Why?") == 1


@pytest.mark.unit
def test_a_custom_rule_is_found_by_its_entry_point_name(tmp_path, monkeypatch):
    # A real (tiny) installed distribution: a dist-info with entry_points.txt on sys.path, found by importlib.metadata.
    (tmp_path / "moslim_test_rule_plugin.py").write_text(
        'def no_contractions(question, response):\n    return int("n\'t" not in response)\n'
    )
    dist = tmp_path / "moslim_test_rule_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: moslim-test-rule-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[moslim_plugin.rules]\nformal = moslim_test_rule_plugin:no_contractions\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = load_spec({"objectives": [{"name": "formal", "levels": 2, "rule": "formal"}]})
    assert spec.objectives[0].level("q", "It is fine.") == 1 and spec.objectives[0].level("q", "Don't.") == 0
    with pytest.raises(SpecError, match=r"entry points \(moslim_plugin.rules\): \['formal'\]; or 'module:function'"):
        load_spec({"objectives": [{"name": "formal", "levels": 2, "rule": "formall"}]})


@pytest.mark.unit
@pytest.mark.parametrize("returned", [2, -1, 0.5, None, "1"])
def test_a_rule_that_returns_no_valid_level_stops_scoring_naming_the_objective(returned):
    spec = load_spec({"objectives": [{"name": "asks", "levels": 2, "rule": {"name": "helpers_reward:returns",
                                                                            "value": returned}}]})  # fmt: skip
    scorer = Scorer(None, None, spec=spec)
    with pytest.raises(ValueError, match=rf"objective 'asks': rule 'helpers_reward:returns' returned {returned!r}"):
        scorer.score(["q"], ["r"], [{"asks": 1}])


@pytest.mark.unit
@pytest.mark.parametrize("mapping", sorted(BUILTIN_MAPPINGS))
def test_a_rule_objectives_reward_is_the_mapping_applied_to_its_exact_level(mapping):
    spec = load_spec(RULES)
    responses = [words(10), words(25), "Pros:\n- cheap\n- fast\nSource: me", words(40) + ". Two. Three. Four."]
    requests = [{"length": 0}, {"length": 0, "format": 1}, {"format": 1, "sources": 1}, {"sentences": 2}]
    result = Scorer(None, None, mapping=mapping, spec=spec).score(["q"] * 4, responses, requests)
    exact = torch.tensor([[o.level("q", r) for o in spec.objectives] for r in responses])
    one_hot = torch.nn.functional.one_hot(exact, 3).float()
    one_hot[:, [1, 3], 2] = 0  # 2-level objectives: no class 2
    targets = torch.tensor([[0, -1, -1, -1], [0, 1, -1, -1], [-1, 1, -1, 1], [-1, -1, 2, -1]])
    rewards, terms = BUILTIN_MAPPINGS[mapping](one_hot, targets, torch.tensor(spec.levels), None)
    assert torch.equal(result.probs, one_hot) and torch.equal(result.expected_level, exact.float())
    torch.testing.assert_close(result.rewards, rewards, atol=0, rtol=0)
    torch.testing.assert_close(result.terms, terms, atol=0, rtol=0)
    if mapping == "moslim":  # z-score of a one-hot: sqrt(L - 1) on target, -1/sqrt(L - 1) off it
        assert result.terms[1].tolist() == pytest.approx([-1 / math.sqrt(2), -1, 0, 0])  # both missed
        assert result.rewards.tolist() == pytest.approx([2**0.5, (-1 - 1 / math.sqrt(2)) / 2, 1, 2**0.5])


@pytest.fixture(scope="module")
def mixed_model(smollm2_dir):
    """Random tiny Llama heads for the learned objectives of MIXED_SPEC, SmolLM2's real tokenizer."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    return MultiHeadRewardModel(LlamaModel(tiny_llama_config(vocab_size=len(tokenizer))), MIXED_SPEC), tokenizer


@pytest.mark.integration
def test_the_reward_model_has_heads_only_for_the_learned_objectives_and_reloads(mixed_model, tmp_path):
    model, tokenizer = mixed_model
    assert MIXED_SPEC.learned == (0,) and model.head_levels == (5,) and len(model.heads) == 1
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    loaded = MultiHeadRewardModel.from_pretrained(tmp_path, spec=MIXED_SPEC)
    assert loaded.spec.fingerprint == MIXED_SPEC.fingerprint and loaded.head_levels == (5,)
    ids = torch.tensor([tokenizer("Paris.")["input_ids"]])
    assert loaded(ids, torch.ones_like(ids)).shape == (1, 1, 5)


@pytest.mark.unit
def test_a_spec_of_rules_only_builds_no_reward_model_and_a_learned_one_needs_one(mixed_model):
    with pytest.raises(SpecError, match="every objective is a rule, so there is no reward-model head"):
        MultiHeadRewardModel(mixed_model[0].backbone, load_spec(RULES))
    with pytest.raises(SpecError, match=r"objective\(s\) \['helpfulness'\] are learned, not rules: scoring them"):
        Scorer(None, None, spec=MIXED_SPEC)


@pytest.mark.integration
@pytest.mark.parametrize("calibrated", [False, True])
def test_rule_and_learned_objectives_are_scored_in_one_batch_through_one_mapping(mixed_model, calibrated):
    """Learned rows are the RM's probabilities, rule rows one-hot at the exact level; with calibration statistics
    the rule rows are an exact classifier's (mean 1/L, std sqrt(L-1)/L), so a rule's term does not change."""
    model, tokenizer = mixed_model
    model.stats = MappingStats.from_probs(torch.rand(8, 1, 5).softmax(-1), (5,)) if calibrated else None
    try:
        scorer = Scorer(model, tokenizer, batch_size=2)
        questions, responses = ["Name fruits."] * 3, ["Apples.", "Fruits:\n- apples\n- pears", words(40)]
        requests = [{"helpfulness": 3, "length": 0}, {"format": 1}, {"helpfulness": 1, "length": 1, "format": 1}]
        result = scorer.score(questions, responses, requests)
        head = torch.cat([model_probs(model, tokenizer, q, r)[None, :1] for q, r in zip(questions, responses)])
        expected = torch.zeros(3, 3, 5)
        expected[:, 0] = head[:, 0]
        expected[[0, 1, 2], 1, [0, 0, 2]] = 1  # length: 1, 5 and 40 words
        expected[[0, 1, 2], 2, [0, 1, 0]] = 1  # format
        torch.testing.assert_close(result.probs, expected, atol=1e-5, rtol=0)
        stats = None
        if calibrated:  # the learned row from the checkpoint, the rule rows an exact classifier's
            stats = MappingStats.empty(MIXED_SPEC.levels)
            stats.mean[0], stats.std[0], stats.count[0] = model.stats.mean[0], model.stats.std[0], 8
            stats.mean[1, :3], stats.std[1, :3], stats.count[1, :3] = 1 / 3, math.sqrt(2) / 3, 8
            stats.mean[2, :2], stats.std[2, :2], stats.count[2, :2] = 1 / 2, 1 / 2, 8
        targets = torch.tensor([[3, 0, -1], [-1, -1, 1], [1, 1, 1]])
        rewards, _ = moslim(expected, targets, torch.tensor(MIXED_SPEC.levels), stats)
        torch.testing.assert_close(result.rewards, rewards, atol=1e-4, rtol=0)
        assert result.terms[:, 2].tolist() == pytest.approx([0, 1, -1])  # format (2 levels): hit +1, miss -1
        assert result.terms[2, 1].item() == pytest.approx(-1 / math.sqrt(2))  # length (3 levels) missed
        diagnostics = result.diagnostics()
        assert set(diagnostics) == {f"moslim/{n}/{d}" for n in MIXED_SPEC.names for d in ("p_target", "hit", "term")}
        assert diagnostics["moslim/format/p_target"] == 0.5 and diagnostics["moslim/format/hit"] == 0.5
    finally:
        model.stats = None
