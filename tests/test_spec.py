import json

import pytest
import yaml

from moslim_plugin.core.spec import Objective, ObjectiveSpec, SpecError, load_spec

HELPSTEER = {
    "objectives": [
        {"name": "helpfulness", "levels": 5, "level_names": ["no", "low", "mid", "high", "max"]},
        {"name": "verbosity", "levels": 5},
        {"name": "harmlessness", "levels": 2, "rating": {"path": "a.harm", "bins": [0.5], "range": [0, 1]}},
    ]
}


@pytest.mark.unit
def test_bundled_specs_load_with_expected_objectives_and_levels():
    helpsteer = load_spec("helpsteer")
    assert helpsteer.names == ("helpfulness", "verbosity", "harmlessness")
    assert helpsteer.levels == (5, 5, 2)
    assert helpsteer.objectives[0].phrase(3) == "very helpful"
    assert helpsteer.objectives[0].rating == {"path": "helpfulness", "bins": [0.5, 1.5, 2.5, 3.5], "range": [0, 4]}
    hh = load_spec("hh")
    assert hh.names == ("helpful", "harmless") and hh.levels == (2, 2)
    assert hh.index("harmless") == 1


@pytest.mark.unit
def test_defaults_fill_level_names_and_empty_phrasing():
    spec = load_spec(HELPSTEER)
    verbosity = spec.objectives[1]
    assert verbosity.level_names == ("0", "1", "2", "3", "4")
    assert verbosity.phrasing == "" and verbosity.phrase(2) == ""
    assert spec.objectives[0].phrasing == "{level}" and spec.objectives[0].phrase(3) == "high"
    assert spec.source == "<dict>"


@pytest.mark.unit
def test_yaml_and_json_files_load_to_the_same_spec(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(HELPSTEER))
    (tmp_path / "s.json").write_text(json.dumps(HELPSTEER))
    a, b = load_spec(tmp_path / "s.yaml"), load_spec(str(tmp_path / "s.json"))
    assert a.objectives == b.objectives
    assert a.source.endswith("s.yaml") and b.source.endswith("s.json")


@pytest.mark.unit
def test_fingerprint_ignores_key_order_source_and_written_out_defaults(tmp_path):
    base = load_spec(HELPSTEER)
    reordered = {"objectives": [dict(reversed(list(o.items()))) for o in HELPSTEER["objectives"]]}
    (tmp_path / "x.json").write_text(json.dumps(base.to_dict()))
    assert load_spec(reordered).fingerprint == base.fingerprint
    assert load_spec(tmp_path / "x.json").fingerprint == base.fingerprint
    assert ObjectiveSpec.from_dict(base.to_dict(), source="elsewhere").fingerprint == base.fingerprint
    assert len(base.fingerprint) == 16


@pytest.mark.unit
def test_fingerprint_changes_with_levels_names_or_order():
    base = load_spec(HELPSTEER).fingerprint
    more_levels = json.loads(json.dumps(HELPSTEER))
    more_levels["objectives"][1]["levels"] = 4
    swapped = {"objectives": HELPSTEER["objectives"][::-1]}
    renamed = json.loads(json.dumps(HELPSTEER))
    renamed["objectives"][0]["level_names"][0] = "none"
    assert len({base, load_spec(more_levels).fingerprint, load_spec(swapped).fingerprint,
                load_spec(renamed).fingerprint}) == 4  # fmt: skip


@pytest.mark.unit
def test_to_dict_round_trips():
    spec = load_spec("helpsteer")
    again = ObjectiveSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.objectives == spec.objectives


@pytest.mark.unit
def test_check_same_names_both_sources_on_mismatch():
    a = load_spec("helpsteer")
    a.check_same(load_spec("helpsteer"), "checkpoint vs dataset")
    with pytest.raises(ValueError, match=r"checkpoint vs dataset.*helpsteer\.yaml.*hh\.yaml.*helpfulness"):
        a.check_same(load_spec("hh"), "checkpoint vs dataset")


@pytest.mark.unit
def test_index_of_unknown_objective_lists_known_ones():
    with pytest.raises(SpecError, match=r"unknown objective 'style'.*'helpful', 'harmless'"):
        load_spec("hh").index("style")


def _objective(**fields):
    return {"objectives": [{"name": "helpfulness", "levels": 3, **fields}]}


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec, pattern",
    [
        (_objective(name="helpful ness"), r"objectives\[0\].*field 'name'.*'helpful ness'"),
        (_objective(name=3), r"field 'name'.*got 3"),
        (_objective(levels=1), r"field 'levels': expected an integer in \[2, 32\], got 1"),
        (_objective(levels=33), r"field 'levels': expected an integer in \[2, 32\], got 33"),
        (_objective(levels=10**9), r"field 'levels': expected an integer in \[2, 32\], got 1000000000"),
        (_objective(levels=True), r"field 'levels'.*got True"),
        (_objective(levels="5"), r"field 'levels'.*got '5'"),
        (_objective(level_names=["a", "b"]), r"field 'level_names': expected 3 names.*\('a', 'b'\)"),
        (_objective(level_names=["a", "b", "a"]), r"field 'level_names': names must be unique"),
        (_objective(level_names=["a", "b;c", "d"]), r"field 'level_names\[1\]': 'b;c' contains \[';'\]"),
        (_objective(level_names=["a", " ", "d"]), r"field 'level_names\[1\]': expected a non-empty name"),
        (_objective(phrasing="be {tone}"), r"field 'phrasing': unknown placeholder\(s\) \['tone'\]"),
        (_objective(phrasing="be {level"), r"field 'phrasing': 'be \{level' is not a valid template"),
        (_objective(phrasing="x [y]"), r"field 'phrasing'.*contains \['\[', '\]'\]"),
        (_objective(colour="red"), r"unknown field\(s\) \['colour'\]"),
        (_objective(rating={"path": "a", "bins": [1.0]}), r"field 'rating.bins': expected 2 strictly ascending"),
        (_objective(rating={"path": "a", "bins": [2, 1]}), r"field 'rating.bins'.*got \[2, 1\]"),
        (_objective(rating={"path": "a..b", "bins": [1, 2]}), r"field 'rating.path'.*got 'a..b'"),
        (_objective(rating={"path": "a", "bins": [1, 2], "range": [3, 0]}), r"field 'rating.range'.*\[3, 0\]"),
        (_objective(rating={"path": "a", "bins": [1, 5], "range": [0, 4]}), r"thresholds \[1, 5\] must lie inside"),
        (_objective(rating={"path": "a", "bins": [1, 2], "scale": 2}), r"'rating': unknown key\(s\) \['scale'\]"),
        ({"objectives": [{"levels": 3}]}, r"objectives\[0\]: missing field 'name'"),
        ({"objectives": []}, r"field 'objectives': expected a list of 1 to 32, got \[\]"),
        (
            {"objectives": [{"name": f"o{i}", "levels": 2} for i in range(33)]},
            r"field 'objectives': expected a list of 1 to 32, got 33 objectives",
        ),
        ({"objectives": [{"name": "a", "levels": 2}], "extra": 1}, r"unknown top-level key\(s\) \['extra'\]"),
        ({}, r"missing field 'objectives'"),
        ({"objectives": [{"name": "a", "levels": 2}, {"name": "a", "levels": 3}]}, r"duplicate name\(s\) \['a'\]"),
    ],
)
def test_bad_spec_error_names_the_field_and_value(spec, pattern):
    with pytest.raises(SpecError, match=pattern):
        load_spec(spec)


@pytest.mark.unit
def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objectives:\n  - name: x\n    levels: 0\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: objectives\[0\] \('x'\): field 'levels'.*got 0"):
        load_spec(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{objectives: ")
    with pytest.raises(SpecError, match=r"broken\.json: not valid JSON"):
        load_spec(broken)
    twice = tmp_path / "twice.yaml"
    twice.write_text("objectives:\n  - name: x\n    levels: 3\n    levels: 4\n")
    with pytest.raises(SpecError, match=r"(?s)twice\.yaml: not valid YAML: .*duplicate key\(s\) \['levels'\].*line 2"):
        load_spec(twice)
    toml = tmp_path / "s.toml"
    toml.write_text("")
    with pytest.raises(SpecError, match=r"s\.toml: unknown spec file type '\.toml'"):
        load_spec(toml)
    with pytest.raises(
        SpecError, match=r"nope\.yaml: no such spec file \(bundled spec names: \['helpsteer', 'helpsteer2', 'hh'"
    ):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.unit
def test_a_spec_file_too_large_not_utf8_or_with_yaml_aliases_is_refused_naming_the_file(tmp_path):
    from moslim_plugin.core.spec import MAX_SPEC_BYTES

    big = tmp_path / "big.yaml"
    big.write_text("objectives:\n  - name: a\n    levels: 2\n    description: " + "x" * MAX_SPEC_BYTES + "\n")
    size = big.stat().st_size
    with pytest.raises(
        SpecError, match=rf"big\.yaml: {size} bytes, more than a spec may hold \({MAX_SPEC_BYTES} bytes\)"
    ):
        load_spec(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("objectives:\n  - name: a\n    levels: 2\n    description: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin\.yaml: not UTF-8 text \(line 4: invalid continuation byte\)"):
        load_spec(latin)
    # nested aliases would expand a few hundred bytes into gigabytes
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\nobjectives: [{name: a, levels: 2}]\n')
    with pytest.raises(
        SpecError, match=r"(?s)bomb\.yaml: not valid YAML: YAML aliases \(\*name\) are not allowed.*line 2"
    ):
        load_spec(bomb)


@pytest.mark.unit
def test_objective_validates_when_built_directly():
    assert Objective("a", 2, ("x", "y"), "{level}").phrase(1) == "y"
    with pytest.raises(ValueError, match="field 'levels'"):
        Objective("a", 1, ("x",), "")


@pytest.mark.unit
def test_instructions_travel_in_to_dict_and_the_fingerprint_only_when_given():
    plain = load_spec(HELPSTEER)
    assert "instructions" not in plain.to_dict()["objectives"][0] and not plain.has_instructions
    with_sentences = {"objectives": [dict(HELPSTEER["objectives"][2], instructions=["Be risky.", "Be safe."])]}
    spec = load_spec(with_sentences)
    assert spec.objectives[0].instructions == ("Be risky.", "Be safe.") and spec.has_instructions
    assert load_spec(spec.to_dict()).fingerprint == spec.fingerprint
    assert spec.fingerprint != load_spec({"objectives": [HELPSTEER["objectives"][2]]}).fingerprint
