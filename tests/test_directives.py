import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from moslim_plugin.core.directives import (
    STYLES,
    DirectiveError,
    apply_directive,
    label_to_request,
    parse_directive,
    render_directive,
    request_to_label,
    strip_directive,
    validate_request,
)
from moslim_plugin.core.spec import NO_PREFERENCE_SENTENCE, SpecError, load_spec

HELPSTEER = load_spec("helpsteer")

# Level names / phrasings as free as the spec allows: parentheses, colons, slashes, digits, unicode.
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";[]\n\r"), min_size=1, max_size=12
).filter(str.strip)


@st.composite
def spec_and_request(draw, with_instructions=False):
    names = draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), min_size=1, max_size=5,
                          unique=True))  # fmt: skip
    objectives = []
    for name in names:
        levels = draw(st.integers(2, 9))
        objective = {"name": name, "levels": levels}
        if draw(st.booleans()):
            objective["level_names"] = draw(st.lists(_text, min_size=levels, max_size=levels, unique=True))
        if draw(st.booleans()):
            objective["phrasing"] = draw(st.sampled_from(["{level}", "be {level} ({index} of {max})", "", "x ) ("]))
        if with_instructions:
            ends = st.sampled_from(".!?")
            objective["instructions"] = [f"{draw(_text).strip()} {name}#{i}{draw(ends)}" for i in range(levels)]
        objectives.append(objective)
    try:
        spec = load_spec({"objectives": objectives})
    except SpecError:  # drawn sentences that contain one another: the spec refuses them (tested below)
        assume(False)
    chosen = draw(st.lists(st.sampled_from(names), unique=True))
    request = {name: draw(st.integers(0, spec.levels[spec.index(name)] - 1)) for name in chosen}
    return spec, request


@pytest.mark.unit
def test_render_matches_documented_format():
    text = render_directive(HELPSTEER, {"verbosity": 1, "helpfulness": 3}, "tagged")
    assert text == "[Preferences] helpfulness: 3/4 (very helpful); verbosity: 1/4 (concise) [/Preferences]"
    assert render_directive(HELPSTEER, {}, "tagged") == "[Preferences] no preference [/Preferences]"
    unnamed = load_spec({"objectives": [{"name": "a", "levels": 3}]})
    assert render_directive(unnamed, {"a": 2}, "tagged") == "[Preferences] a: 2/2 [/Preferences]"


@pytest.mark.unit
def test_natural_directive_joins_the_requested_levels_sentences_in_spec_order():
    text = render_directive(HELPSTEER, {"verbosity": 0, "helpfulness": 3})
    assert text == "Give a very useful answer. Answer in one short sentence."
    assert render_directive(HELPSTEER, {}) == NO_PREFERENCE_SENTENCE
    assert parse_directive(HELPSTEER, text) == {"helpfulness": 3, "verbosity": 0}
    assert parse_directive(HELPSTEER, NO_PREFERENCE_SENTENCE) == {}


@pytest.mark.unit
def test_natural_style_needs_instructions_and_says_which_objectives_lack_them():
    bare = load_spec({"objectives": [{"name": "a", "levels": 2}, {"name": "b", "levels": 2}]})
    with pytest.raises(DirectiveError, match=r"\['a', 'b'\] in spec <dict> have none.*'tagged' style"):
        render_directive(bare, {"a": 1})
    with pytest.raises(DirectiveError, match=r"style must be one of \('natural', 'tagged'\), got 'xml'"):
        render_directive(HELPSTEER, {"verbosity": 1}, "xml")


@pytest.mark.unit
@pytest.mark.parametrize(
    "text",
    [
        "Give a very useful answer",  # no full stop: not the spec's sentence
        "give a very useful answer.",  # other case
        "Please give a very useful answer. Thanks.",  # not a whole line of spec sentences
        "Give a very useful answer.  Answer in one short sentence.",  # two spaces
    ],
)
def test_natural_directive_is_matched_exactly_or_not_at_all(text):
    with pytest.raises(DirectiveError, match=r"no natural directive"):
        parse_directive(HELPSTEER, text, style="natural")


@pytest.mark.unit
def test_natural_directive_with_repeated_or_mixed_sentences_is_refused():
    with pytest.raises(DirectiveError, match=r"'verbosity' is requested twice"):
        parse_directive(HELPSTEER, "Answer in one short sentence. Answer in a short paragraph.")
    with pytest.raises(DirectiveError, match=r"no-preference sentence is mixed"):
        parse_directive(HELPSTEER, f"Answer in one short sentence. {NO_PREFERENCE_SENTENCE}")


@pytest.mark.unit
@pytest.mark.parametrize(
    "instructions, pattern",
    [
        (["Be short.", "Be short."], r"a\.instructions\[0\] 'Be short\.' repeats a\.instructions\[1\]"),
        (["Be short.", "Really. Be short."], r"instructions\[1\] 'Really\. Be short\.' contains a\.instructions\[0\]"),
        (["Be short.", ""], r"instructions\[1\]': expected one non-empty sentence"),
        (["Be short", "Be long."], r"instructions\[0\]': expected one non-empty sentence ending"),
        (["Be short."], r"expected 2 sentences \(one per level\)"),
        (["Be short.", "Be [long]."], r"contains \['\[', '\]'\], which delimit"),
        (["Be short.", NO_PREFERENCE_SENTENCE], r"repeats the no-preference sentence"),
    ],
)
def test_spec_instructions_must_be_sentences_distinct_across_the_spec(instructions, pattern):
    with pytest.raises(SpecError, match=pattern):
        load_spec({"objectives": [{"name": "a", "levels": 2, "instructions": instructions}]})
    with pytest.raises(SpecError, match=r"a\.instructions\[1\] 'Go\.' repeats b\.instructions\[0\]"):
        load_spec({"objectives": [{"name": "a", "levels": 2, "instructions": ["Stop.", "Go."]},
                                  {"name": "b", "levels": 2, "instructions": ["Go.", "Wait."]}]})  # fmt: skip


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(spec_and_request(), st.text(max_size=30), st.text(max_size=30))
def test_render_then_parse_is_identity_for_every_valid_request(spec_request, before, after):
    spec, request = spec_request
    text = render_directive(spec, request, "tagged")
    assert parse_directive(spec, text) == request
    # Surrounding text (templates, user message, the response) does not disturb it unless it opens a directive first.
    if "[preferences]" not in before.lower():
        assert parse_directive(spec, before + text + after) == request
    assert list(parse_directive(spec, text)) == [n for n in spec.names if n in request]  # spec order out


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(spec_and_request(with_instructions=True), st.text(max_size=30), st.text(max_size=30))
def test_natural_render_then_parse_is_identity_in_every_style_and_surrounding(spec_request, before, after):
    spec, request = spec_request
    for style in STYLES:
        text = render_directive(spec, request, style)
        assert parse_directive(spec, text) == parse_directive(spec, text, style) == request
        assert strip_directive(spec, request, f"Q?\n\n{text}") == "Q?"
    # A natural directive is a whole line: the text around it ends and starts a line (or a template token).
    text = render_directive(spec, request)
    for prefix in (before + "\n", before + "<|im_start|>user\n"):
        try:
            parse_directive(spec, prefix)
        except DirectiveError:  # the drawn text holds no directive of its own, so ours is the first one
            assert parse_directive(spec, prefix + text + "\n" + after) == request
            assert parse_directive(spec, prefix + text + "<|im_end|>" + after) == request


@pytest.mark.unit
@settings(max_examples=100, deadline=None)
@given(spec_and_request())
def test_label_round_trip_is_identity_for_string_and_decoded_forms(spec_request):
    spec, request = spec_request
    label = request_to_label(spec, request)
    assert " " not in label
    assert label_to_request(spec, label) == request
    assert label_to_request(spec, json.loads(label)) == request


@pytest.mark.unit
def test_label_is_canonical_json_in_spec_order():
    label = request_to_label(HELPSTEER, {"harmlessness": 1, "helpfulness": 0})
    expected = '{"moslim":{"targets":{"helpfulness":0,"harmlessness":1},"spec":"FP"}}'
    assert label == expected.replace("FP", HELPSTEER.fingerprint)


@pytest.mark.unit
@pytest.mark.parametrize("style", STYLES)
def test_first_directive_wins_over_an_echo_in_the_response(style):
    prompt = render_directive(HELPSTEER, {"verbosity": 0}, style)
    for echo in STYLES:
        response = render_directive(HELPSTEER, {"verbosity": 4}, echo)
        assert parse_directive(HELPSTEER, prompt + "\nSure!\n" + response) == {"verbosity": 0}


@pytest.mark.unit
def test_parse_accepts_lowercased_tags_and_loose_spacing():
    assert parse_directive(HELPSTEER, "[preferences]helpfulness :2 / 4 ( x );verbosity: 0/4[/preferences]") == {
        "helpfulness": 2,
        "verbosity": 0,
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, pattern",
    [
        (
            "Just answer the question.",
            r"no directive \(\[Preferences\] \.\.\. \[/Preferences\], or a line of the spec's",
        ),
        ("[Preferences] helpfulness: 3/4", r"opening tag but no closing tag"),
        ("[Preferences] style: 1/4 (x) [/Preferences]", r"unknown objective 'style'.*\['helpfulness', 'verbosity'"),
        ("[Preferences] helpfulness: 5/4 [/Preferences]", r"level 5 for 'helpfulness' is out of range 0\.\.4"),
        ("[Preferences] helpfulness: -1/4 [/Preferences]", r"level -1 for 'helpfulness' is out of range"),
        (
            "[Preferences] helpfulness: 1/2 [/Preferences]",
            r"0\.\.2 scale, but the spec .*yaml.* has 0\.\.4",
        ),
        ("[Preferences] helpfulness = high [/Preferences]", r"malformed directive item 'helpfulness = high'"),
        ("[Preferences] [/Preferences]", r"malformed directive item ''"),
        ("[Preferences] verbosity: 1/4; verbosity: 2/4 [/Preferences]", r"'verbosity' appears twice"),
    ],
)
def test_bad_directive_text_gives_precise_error(text, pattern):
    with pytest.raises(DirectiveError, match=pattern):
        parse_directive(HELPSTEER, text)


@pytest.mark.unit
@pytest.mark.parametrize(
    "request_, pattern",
    [
        ({"style": 1}, r"unknown objective 'style' in request"),
        ({"harmlessness": 2}, r"level 2 for 'harmlessness' is out of range: expected an integer 0\.\.1"),
        ({"helpfulness": 1.0}, r"level 1\.0 for 'helpfulness'"),
        ({"helpfulness": True}, r"level True for 'helpfulness'"),
        ([("helpfulness", 1)], r"a request must be a dict"),
    ],
)
def test_bad_request_gives_precise_error(request_, pattern):
    with pytest.raises(DirectiveError, match=pattern):
        render_directive(HELPSTEER, request_)
    with pytest.raises(DirectiveError, match=pattern):
        request_to_label(HELPSTEER, request_)


@pytest.mark.unit
def test_a_masked_head_is_none_only_where_allowed_and_its_name_is_still_checked():
    labels = {"verbosity": None, "helpfulness": 3}
    assert validate_request(HELPSTEER, labels, masked_ok=True) == {"helpfulness": 3, "verbosity": None}
    with pytest.raises(DirectiveError, match="level None for 'verbosity' is out of range"):
        validate_request(HELPSTEER, labels)  # a request never masks a head
    with pytest.raises(DirectiveError, match="unknown objective 'tone'"):
        validate_request(HELPSTEER, {"tone": None}, masked_ok=True)
    with pytest.raises(DirectiveError, match="level 9 for 'helpfulness' is out of range"):
        validate_request(HELPSTEER, {"helpfulness": 9, "verbosity": None}, masked_ok=True)


@pytest.mark.unit
def test_validate_request_accepts_numpy_ints_and_orders_by_spec():
    np = pytest.importorskip("numpy")
    out = validate_request(HELPSTEER, {"verbosity": np.int64(2), "helpfulness": 1})
    assert out == {"helpfulness": 1, "verbosity": 2} and all(type(v) is int for v in out.values())


@pytest.mark.unit
@pytest.mark.parametrize(
    "label, pattern",
    [
        ("not json", r"label is not MOSLIM JSON"),
        ('{"targets": {}}', r'expected a label \{"moslim"'),
        ({"moslim": {"targets": {}}}, r"exactly the keys 'targets' and 'spec'"),
        ({"moslim": {"targets": {}, "spec": "0123456789abcdef"}}, r"made for spec fingerprint '0123456789abcdef'"),
        (None, r'expected a label \{"moslim"'),
    ],
)
def test_bad_label_gives_precise_error(label, pattern):
    with pytest.raises(DirectiveError, match=pattern):
        label_to_request(HELPSTEER, label)


@pytest.mark.unit
def test_label_dict_with_none_targets_from_arrow_struct_unification_means_not_requested():
    label = json.loads(request_to_label(HELPSTEER, {"verbosity": 2}))
    label["moslim"]["targets"].update(helpfulness=None, harmlessness=None)
    assert label_to_request(HELPSTEER, label) == {"verbosity": 2}


@pytest.mark.unit
def test_label_for_another_spec_is_refused():
    hh = load_spec("hh")
    with pytest.raises(DirectiveError, match=r"prepare the prompts again"):
        label_to_request(HELPSTEER, request_to_label(hh, {"helpful": 1}))


@pytest.mark.unit
def test_apply_directive_system_placement_creates_or_prepends_and_keeps_input():
    req = {"helpfulness": 4}
    assert apply_directive(HELPSTEER, req, "Hi") == [
        {"role": "system", "content": render_directive(HELPSTEER, req)},
        {"role": "user", "content": "Hi"},
    ]
    original = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    out = apply_directive(HELPSTEER, req, original)
    assert out[0]["content"] == render_directive(HELPSTEER, req) + "\n\nBe nice."
    assert original[0]["content"] == "Be nice."  # not modified in place
    assert parse_directive(HELPSTEER, out[0]["content"]) == req


@pytest.mark.unit
def test_apply_directive_user_placements_go_on_the_last_user_message_before_or_after_its_text():
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    directive = "Answer in detail, with several paragraphs."
    out = apply_directive(HELPSTEER, {"verbosity": 3}, messages, placement="user_prefix")
    assert out[0]["content"] == "first" and out[1]["content"] == "ok"
    assert out[2]["content"] == f"{directive}\n\nsecond"
    out = apply_directive(HELPSTEER, {"verbosity": 3}, messages, placement="user_suffix")
    assert out[0]["content"] == "first" and out[1]["content"] == "ok"
    assert out[2]["content"] == f"second\n\n{directive}"
    assert messages[2]["content"] == "second"  # not modified in place


@pytest.mark.unit
def test_apply_directive_errors():
    expected = r"placement must be one of \('system', 'user_prefix', 'user_suffix'\), got 'top'"
    with pytest.raises(DirectiveError, match=expected):
        apply_directive(HELPSTEER, {}, "Hi", placement="top")
    with pytest.raises(DirectiveError, match=r"'user_suffix' needs a user message; roles: \['system'\]"):
        apply_directive(HELPSTEER, {}, [{"role": "system", "content": "x"}], placement="user_suffix")
    with pytest.raises(DirectiveError, match=r"prompt must be a str or a list"):
        apply_directive(HELPSTEER, {}, [{"role": "user"}])
    for style in STYLES:
        done = apply_directive(HELPSTEER, {"verbosity": 1}, "Hi", style=style)
        for again in STYLES:
            with pytest.raises(DirectiveError, match=r"the system message already carries a directive"):
                apply_directive(HELPSTEER, {"verbosity": 2}, done, style=again)


@pytest.mark.integration
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("placement", ["system", "user_prefix", "user_suffix"])
def test_directive_survives_smollm2_chat_template_and_tokenizer_round_trip(smollm2_dir, placement, style):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    request = {"helpfulness": 3, "harmlessness": 1}
    messages = apply_directive(HELPSTEER, request, "What is the capital of France?", placement=placement, style=style)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>" in prompt and render_directive(HELPSTEER, request, style) in prompt
    if placement == "system":  # our system message replaces SmolLM2's default one
        assert prompt.count("<|im_start|>system") == 1
    decoded = tokenizer.decode(tokenizer(prompt + "Paris.")["input_ids"], skip_special_tokens=False)
    assert parse_directive(HELPSTEER, decoded) == request
