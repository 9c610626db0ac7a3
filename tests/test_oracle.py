import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moslim_plugin.core.directives import STYLES, parse_directive, render_directive
from moslim_plugin.core.spec import load_spec
from moslim_plugin.demo.oracle import (
    DEMO_OBJECTIVES,
    JUDGES,
    address_level,
    demo_spec,
    exclamation_level,
    formality_level,
    format_level,
    judge,
    length_level,
    oracle_spec,
    request_hits,
)


@pytest.mark.unit
def test_length_levels_are_word_count_bands_at_20_and_32():
    assert length_level("") == 0
    assert length_level(" ".join(["w"] * 20)) == 0
    assert length_level(" ".join(["w"] * 21)) == 1
    assert length_level("\n".join(["w"] * 32)) == 1  # any whitespace separates words
    assert length_level(" ".join(["w"] * 33)) == 2
    assert length_level("It's 2.5 km, e.g. far.") == 0  # punctuation does not split words


@pytest.mark.unit
def test_a_list_needs_two_bulleted_or_numbered_lines():
    for listed in ["- a\n- b", "Intro:\n* one\n* two", "1. first\n2) second", "  • x\n  • y"]:
        assert format_level(listed) == 1, listed
    for prose in ["- only one item", "A paragraph - with a dash - inside.", "In 1. and 2. we see", "-a\n-b", ""]:
        assert format_level(prose) == 0, prose


@pytest.mark.unit
def test_casual_means_a_contraction_not_a_possessive():
    for casual in ["Don't worry.", "It's easy", "you're right", "We'll see", "I'm sure", "they've gone",
                   "Let's go", "It can’t hurt"]:  # fmt: skip
        assert formality_level(casual) == 1, casual
    for formal in ["Do not worry.", "The body's cells divide.", "Newton's laws", "It is easy", "rock 'n' roll"]:
        assert formality_level(formal) == 0, formal


@pytest.mark.unit
def test_excited_means_an_exclamation_mark_and_personal_means_you():
    assert exclamation_level("Wow! Great.") == 1 and exclamation_level("Calm. Really?") == 0
    for personal in ["You can try.", "Check your plan", "Ask yourself", "if you're tired"]:
        assert address_level(personal) == 1, personal
    for impersonal in ["One can try.", "Youth matters", "The bayou floods", "Everyone should rest."]:
        assert address_level(impersonal) == 0, impersonal


@pytest.mark.unit
def test_judge_returns_every_demo_objective_in_spec_order():
    text = "You don't say!\n- one\n- two"
    assert judge(text) == {"length": 0, "format": 1, "formality": 1}
    assert list(judge(text)) == list(demo_spec().names) == list(DEMO_OBJECTIVES)
    assert judge(text, oracle_spec()) == {"length": 0, "format": 1, "formality": 1, "exclamation": 1, "address": 1}


@pytest.mark.unit
def test_judge_refuses_objectives_it_cannot_judge_and_non_text():
    other = load_spec({"objectives": [{"name": "helpfulness", "levels": 2}]})
    with pytest.raises(ValueError, match="no judge for objective.*helpfulness"):
        judge("hi", other)
    with pytest.raises(TypeError, match="response text"):
        judge(None)
    with pytest.raises(ValueError, match=r"the oracle judges \['length'.*got \['tone'\]"):
        oracle_spec(["tone"])


@pytest.mark.unit
def test_request_hits_counts_only_requested_objectives():
    achieved = {"length": 0, "format": 1, "formality": 0}
    assert request_hits(achieved, {"length": 0}) == 1.0
    assert request_hits(achieved, {"length": 2, "format": 1}) == 0.5
    assert request_hits(achieved, {}) == 1.0


@pytest.mark.unit
def test_demo_spec_has_an_ordinal_objective_and_round_trips_through_both_directive_styles():
    spec = demo_spec()
    assert len(spec.names) >= 3 and max(spec.levels) >= 3
    assert set(oracle_spec().names) == set(JUDGES)
    request = {"length": 2, "formality": 1}
    natural = render_directive(spec, request, "natural")
    assert natural == (
        "Answer in detail, with at least four sentences. Write casually and use contractions like it's and don't."
    )
    assert "a detailed answer" in render_directive(spec, request, "tagged")  # the phrase the policy reads
    for style in STYLES:
        assert parse_directive(spec, render_directive(spec, request, style)) == request


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["word", "21", "3.5", "-", "*", "•", "1.", "2)", "\n", "\n- ", "\n1. ", " ", "it's", "!"]),
        max_size=80,
    )
)
def test_the_demo_rules_give_the_oracles_level_on_every_text(parts):
    """`--demo.rules length,format`: the RL's exact reward and the evaluation's judge never disagree."""
    text = " ".join(parts)
    ruled = demo_spec(rules=("length", "format"))
    assert {o.name: o.level("q", text) for o in ruled.objectives if o.rule} == {
        "length": length_level(text),
        "format": format_level(text),
    }


@pytest.mark.unit
def test_demo_rules_keep_the_directives_and_refuse_objectives_without_a_rule():
    ruled, learned = demo_spec(rules=("length", "format")), demo_spec()
    assert ruled.learned == (2,) and learned.learned == (0, 1, 2) and ruled.fingerprint != learned.fingerprint
    request = {"length": 1, "format": 1}
    assert render_directive(ruled, request, "natural") == render_directive(learned, request, "natural")
    with pytest.raises(ValueError, match=r"rules \['formality'\]: a rule can score \['length', 'format'\] here"):
        demo_spec(rules=("formality",))
