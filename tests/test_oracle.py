import pytest

from moslim_plugin.directives import parse_directive, render_directive
from moslim_plugin.oracle import (
    MEDIUM_MAX_WORDS,
    SHORT_MAX_WORDS,
    demo_spec,
    excitement_level,
    format_level,
    judge,
    length_level,
    request_hits,
)
from moslim_plugin.spec import load_spec


@pytest.mark.unit
def test_length_bands_switch_exactly_at_the_word_thresholds():
    assert length_level("") == 0
    assert length_level(" ".join(["w"] * SHORT_MAX_WORDS)) == 0
    assert length_level(" ".join(["w"] * (SHORT_MAX_WORDS + 1))) == 1
    assert length_level(" ".join(["w"] * MEDIUM_MAX_WORDS)) == 1
    assert length_level(" ".join(["w"] * (MEDIUM_MAX_WORDS + 1))) == 2
    # Words, not characters or lines: newlines and runs of spaces separate words like a single space.
    assert length_level("a\n\nb   c") == length_level("a b c") == 0


@pytest.mark.unit
def test_list_needs_two_bulleted_or_numbered_lines():
    assert format_level("- eggs\n- milk") == 1
    assert format_level("Tips:\n1. Sleep early.\n2) Avoid coffee.") == 1
    assert format_level("* one\n• two") == 1
    assert format_level("- only one item") == 0
    assert format_level("Plain prose with a - dash and 1. a number inside.") == 0
    assert format_level("-not a bullet\n-no space") == 0


@pytest.mark.unit
def test_excitement_is_any_exclamation_mark():
    assert excitement_level("Great idea!") == 1
    assert excitement_level("A calm answer.") == 0


@pytest.mark.unit
def test_judge_returns_every_demo_objective_in_spec_order():
    text = "Sure!\n- rest\n- water"
    assert judge(text) == {"length": 0, "format": 1, "excitement": 1}
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
    achieved = {"length": 0, "format": 1, "excitement": 0}
    assert request_hits(achieved, {"length": 0}) == 1.0
    assert request_hits(achieved, {"length": 2, "format": 1}) == 0.5
    assert request_hits(achieved, {}) == 1.0


@pytest.mark.unit
def test_demo_spec_has_an_ordinal_objective_and_round_trips_through_directives():
    spec = demo_spec()
    assert len(spec.names) >= 3 and max(spec.levels) >= 3
    request = {"length": 2, "excitement": 1}
    text = render_directive(spec, request)
    assert "a long detailed answer" in text  # the natural-language phrase the policy reads
    assert parse_directive(spec, text) == request
