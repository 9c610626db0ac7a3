import pytest

from moslim_plugin.core.directives import parse_directive, render_directive
from moslim_plugin.core.spec import load_spec
from moslim_plugin.demo.oracle import (
    address_level,
    demo_spec,
    formality_level,
    judge,
    request_hits,
    sentences_level,
)


@pytest.mark.unit
def test_sentence_levels_count_complete_sentences_only():
    assert sentences_level("") == 0
    assert sentences_level("One sentence.") == 0
    assert sentences_level("One sentence. And an unfinished") == 0  # a cut-off sentence is not complete
    assert sentences_level("One. Two!") == 1
    assert sentences_level("One. Two? Three.") == sentences_level("A. B. C. D. E.") == 2
    # A dot inside a number or a word is not a sentence end; a newline after one is.
    assert sentences_level("It costs 2.5 dollars, e.g.x here.") == 0
    assert sentences_level("First.\nSecond.") == 1


@pytest.mark.unit
def test_casual_means_a_contraction_not_a_possessive():
    for casual in ["Don't worry.", "It's easy", "you're right", "We'll see", "I'm sure", "they've gone",
                   "Let's go", "It can’t hurt"]:  # fmt: skip
        assert formality_level(casual) == 1, casual
    for formal in ["Do not worry.", "The body's cells divide.", "Newton's laws", "It is easy", "rock 'n' roll"]:
        assert formality_level(formal) == 0, formal


@pytest.mark.unit
def test_personal_means_talking_to_the_reader_as_you():
    for personal in ["You can try.", "Check your plan", "Ask yourself", "if you're tired"]:
        assert address_level(personal) == 1, personal
    for impersonal in ["One can try.", "Youth matters", "The bayou floods", "Everyone should rest."]:
        assert address_level(impersonal) == 0, impersonal


@pytest.mark.unit
def test_judge_returns_every_demo_objective_in_spec_order():
    text = "You don't say. Really. Yes."
    assert judge(text) == {"sentences": 2, "formality": 1, "address": 1}
    assert list(judge(text)) == list(demo_spec().names)


@pytest.mark.unit
def test_judge_refuses_objectives_it_cannot_judge_and_non_text():
    other = load_spec({"objectives": [{"name": "helpfulness", "levels": 2}]})
    with pytest.raises(ValueError, match="no judge for objective.*helpfulness"):
        judge("hi", other)
    with pytest.raises(TypeError, match="response text"):
        judge(None)


@pytest.mark.unit
def test_request_hits_counts_only_requested_objectives():
    achieved = {"sentences": 0, "formality": 1, "address": 0}
    assert request_hits(achieved, {"sentences": 0}) == 1.0
    assert request_hits(achieved, {"sentences": 2, "formality": 1}) == 0.5
    assert request_hits(achieved, {}) == 1.0


@pytest.mark.unit
def test_demo_spec_has_an_ordinal_objective_and_round_trips_through_directives():
    spec = demo_spec()
    assert len(spec.names) >= 3 and max(spec.levels) >= 3
    request = {"sentences": 2, "address": 1}
    text = render_directive(spec, request)
    assert "three or more short sentences" in text  # the natural-language phrase the policy reads
    assert parse_directive(spec, text) == request
