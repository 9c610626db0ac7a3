import gzip
import json

import pytest

from moslim_plugin import UserError
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.ratings import convert, main, read_records, write_records

HH_FILE = "hh-rlhf/harmless-base-test.jsonl.gz"  # in ../shared/data (the shared_data fixture)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


GENERIC_SPEC = {
    "objectives": [
        {
            "name": "helpfulness",
            "levels": 3,
            "rating": {"path": "annotations.help", "bins": [3.5, 7], "range": [0, 9]},
        },
        {"name": "safety", "levels": 2, "rating": {"path": "flags.safe", "bins": [0.5], "range": [0, 1]}},
    ]
}


@pytest.mark.unit
def test_generic_reader_bins_nested_ratings_and_keeps_other_labels_when_one_is_missing(tmp_path):
    rows = [
        {"q": {"text": "hi?"}, "a": "hello", "annotations": {"help": 8.0}, "flags": {"safe": 1}},
        {"q": {"text": "how?"}, "a": "so", "annotations": {"help": 3.49}},  # no safety rating
        {"q": {"text": "why?"}, "a": "because", "annotations": {"help": 3.5}, "flags": {"safe": 0}},
    ]
    src, out = write_jsonl(tmp_path / "r.jsonl", rows), tmp_path / "out.jsonl"
    argv = ["--data.dataset", src, "--moslim.format", "generic", "--moslim.output", str(out)]
    argv += ["--moslim.question_key", "q.text", "--moslim.response_key", "a"]
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(GENERIC_SPEC))
    assert main(argv + ["--moslim.spec", str(spec_path)]) == 0
    got = read_jsonl(out)
    assert [r["labels"] for r in got] == [
        {"helpfulness": 2, "safety": 1},
        {"helpfulness": 0, "safety": None},
        {"helpfulness": 1, "safety": 0},
    ]
    assert got[0]["question"] == "hi?" and got[2]["response"] == "because"


@pytest.mark.unit
def test_rating_outside_declared_range_names_file_row_and_value(tmp_path):
    spec = load_spec(GENERIC_SPEC)
    rows = [{"question": "q", "response": "r", "annotations": {"help": 5}, "flags": {"safe": 1}}] * 2
    rows = rows + [{"question": "q", "response": "r", "annotations": {"help": 10}, "flags": {"safe": 1}}]
    with pytest.raises(ValueError, match=r"data\.jsonl: row 2: rating 10 for 'helpfulness' is outside .*\[0, 9\]"):
        convert(spec, "generic", "data.jsonl", rows)


@pytest.mark.unit
def test_rating_path_found_in_no_row_is_an_unknown_column_error():
    spec = load_spec(GENERIC_SPEC)
    rows = [{"question": "q", "response": "r", "annotations": {"helpfulness": 3}, "flags": {"safe": 1}}]
    with pytest.raises(ValueError, match=r"x\.jsonl: rating path\(s\) found in no row.*annotations\.help"):
        convert(spec, "generic", "x.jsonl", rows)


@pytest.mark.unit
def test_empty_dataset_is_an_error_naming_the_file(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: the dataset is empty"):
        convert(load_spec("hh"), "hh_rlhf", str(src), read_records(str(src)))


@pytest.mark.unit
def test_helpsteer2_attributes_map_directly_onto_five_levels():
    spec = load_spec("helpsteer")  # helpfulness, verbosity (0-4) and harmlessness, which HelpSteer2 does not rate
    spec = load_spec({"objectives": [o.to_dict() for o in spec.objectives[:2]]})
    rows = [{"prompt": "p", "response": "r", "helpfulness": 4, "verbosity": 0, "coherence": 3}]
    assert convert(spec, "helpsteer2", "hs2.jsonl", rows)[0]["labels"] == {"helpfulness": 4, "verbosity": 0}
    with pytest.raises(ValueError, match=r"hs2\.jsonl: row 0: rating 5 for 'verbosity' is outside its range \[0, 4\]"):
        convert(spec, "helpsteer2", "hs2.jsonl", [dict(rows[0], verbosity=5)])


@pytest.mark.unit
def test_rule_objectives_need_no_rating_and_get_no_label():
    """HelpSteer2 has no `length` attribute: as a rule objective it is not read at all."""
    spec = load_spec("helpsteer")
    length = {"name": "length", "levels": 3, "rule": {"name": "word_count", "bands": [20, 32]}}
    spec = load_spec({"objectives": [spec.objectives[0].to_dict(), length]})
    rows = [{"prompt": "p", "response": "r", "helpfulness": 4}]
    assert convert(spec, "helpsteer2", "hs2.jsonl", rows)[0]["labels"] == {"helpfulness": 4}


@pytest.mark.unit
def test_helpsteer2_reader_rejects_objective_it_cannot_rate():
    with pytest.raises(ValueError, match="'harmlessness' reads rating 'harmlessness'.*does not provide"):
        convert(load_spec("helpsteer"), "helpsteer2", "hs2.jsonl", [{"prompt": "p", "response": "r"}])


@pytest.mark.unit
def test_ultrafeedback_splits_completions_and_treats_na_as_missing():
    spec = load_spec(
        {
            "objectives": [
                {"name": "helpfulness", "levels": 5},  # no bins: rating 1-5 -> level 0-4
                {"name": "honesty", "levels": 2, "rating": {"path": "honesty", "bins": [3.5]}},
            ]
        }
    )
    completion = {"response": "a", "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "N/A"}}}
    other = {"response": "b", "annotations": {"helpfulness": {"Rating": "1"}, "honesty": {"Rating": "4"}}}
    rows = [{"instruction": "q", "completions": [completion, other]}]
    got = convert(spec, "ultrafeedback", "uf.jsonl", rows)
    assert [(r["response"], r["labels"]) for r in got] == [
        ("a", {"helpfulness": 4, "honesty": None}),
        ("b", {"helpfulness": 0, "honesty": 1}),
    ]


@pytest.mark.unit
def test_pku_saferlhf_gives_safety_flag_and_severity_per_response():
    spec = load_spec({"objectives": [{"name": "safe", "levels": 2}, {"name": "severity", "levels": 4}]})
    row = {
        "prompt": "p",
        "response_0": "ok",
        "response_1": "bad",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "response_0_severity_level": 0,
        "response_1_severity_level": 3,
    }
    got = convert(spec, "pku_saferlhf", "pku.jsonl", [row])
    assert [r["labels"] for r in got] == [{"safe": 1, "severity": 0}, {"safe": 0, "severity": 3}]
    with pytest.raises(ValueError, match=r"pku\.jsonl: row 0: rating 4 for 'severity'"):
        convert(spec, "pku_saferlhf", "pku.jsonl", [dict(row, response_1_severity_level=4)])


@pytest.mark.unit
def test_hh_rlhf_pairs_label_only_the_subset_objective(tmp_path, shared_data):
    # The first rows of the real harmless-base test split, re-compressed under the real file name.
    with gzip.open(shared_data / HH_FILE, "rt") as f:
        rows = [json.loads(next(f)) for _ in range(3)]
    src = tmp_path / "harmless-base-test.jsonl.gz"
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    got = convert(load_spec("hh"), "hh_rlhf", str(src), read_records(str(src)))
    assert len(got) == 6
    assert [r["labels"] for r in got[:2]] == [{"helpful": None, "harmless": 1}, {"helpful": None, "harmless": 0}]
    assert got[0]["question"].startswith("Human:") and "\n\nAssistant:" not in got[0]["response"]
    assert got[0]["response"] == rows[0]["chosen"].rpartition("\n\nAssistant:")[2].strip()


@pytest.mark.unit
def test_whole_real_hh_file_converts_including_its_empty_responses(shared_data):
    rows = read_records(shared_data / HH_FILE)
    got = convert(load_spec("hh"), "hh_rlhf", str(shared_data / HH_FILE), rows)
    assert len(got) == 2 * len(rows) == 2 * 2312
    assert any(r["response"] == "" for r in got)  # real HH-RLHF has empty assistant turns: rated, not dropped


@pytest.mark.unit
def test_missing_text_field_names_the_reader_row_and_keys():
    spec = load_spec({"objectives": [{"name": "helpfulness", "levels": 5}]})
    with pytest.raises(ValueError, match=r"hs2\.jsonl: row 0: no question for the helpsteer2 reader; row keys: \['q'"):
        convert(spec, "helpsteer2", "hs2.jsonl", [{"q": "p", "response": "r", "helpfulness": 1}])


@pytest.mark.unit
def test_generic_reader_combines_several_fields_into_the_question_with_a_template(tmp_path):
    rows = [{"meta": {"context": "A chat about bread."}, "dialogue": "User: how?", "answer": "Knead it.", "help": 2}]
    src, out = write_jsonl(tmp_path / "r.jsonl", rows), tmp_path / "out.jsonl"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"objectives": [{"name": "help", "levels": 3}]}))
    argv = [
        "--data.dataset",
        src,
        "--moslim.format",
        "generic",
        "--moslim.output",
        str(out),
        "--moslim.spec",
        str(spec),
    ]
    argv += ["--moslim.question_key", "{meta.context}\\n\\n{dialogue}", "--moslim.response_key", "answer"]
    assert main(argv) == 0
    (got,) = read_jsonl(out)
    assert got["question"] == "A chat about bread.\n\nUser: how?" and got["labels"] == {"help": 2}
    rows[0].pop("dialogue")
    with pytest.raises(ValueError, match=r"row 0: no question at '\{meta.context\}"):
        convert(
            load_spec(json.loads(spec.read_text())),
            "generic",
            "r.jsonl",
            rows,
            "{meta.context}\\n\\n{dialogue}",
            "answer",
        )


@pytest.mark.unit
def test_integer_ratings_need_no_bins_and_an_off_range_value_names_rating_range():
    rows = [{"question": "q", "response": "r", "score": s} for s in (1, 2, 3)]
    plain = load_spec({"objectives": [{"name": "score", "levels": 3}]})  # no rating entry: range 0..2
    with pytest.raises(
        ValueError, match=r"row 2: rating 3 for 'score' is outside its range \[0, 2\] \(the default\).*rating\.range"
    ):
        convert(plain, "generic", "likert.jsonl", rows)
    one_to_three = load_spec({"objectives": [{"name": "score", "levels": 3, "rating": {"range": [1, 3]}}]})
    assert [r["labels"]["score"] for r in convert(one_to_three, "generic", "likert.jsonl", rows)] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"without 'rating.bins' the range must hold exactly 3 integers"):
        load_spec({"objectives": [{"name": "score", "levels": 3, "rating": {"range": [1, 5]}}]})


@pytest.mark.integration
def test_models_command_prints_the_bundled_models_local_folders(capsys, minilm_dir):
    from moslim_plugin.cli import main as cli

    assert cli(["models", "minilm"]) == 0
    assert capsys.readouterr().out.strip() == str(minilm_dir)
    assert cli(["models"]) == 0
    listing = capsys.readouterr().out
    assert str(minilm_dir) in listing and "SmolLM2-135M-Instruct" in listing


@pytest.mark.unit
def test_an_optional_template_part_is_dropped_with_its_label_when_its_field_is_missing_or_a_placeholder(tmp_path):
    rows = [
        {"fact": "Bread rises.", "context": "A: hi", "r": "yes", "help": 1},
        {"fact": "_nofact\n", "context": "A: hey", "r": "no", "help": 0},  # the data set's own placeholder
        {"context": "A: yo", "r": "maybe", "help": 2},  # no fact at all
        {"fact": "  ", "context": "A: [sic]", "r": "ok", "help": 2},  # blank; brackets without a field stay
    ]
    src, out = write_jsonl(tmp_path / "r.jsonl", rows), tmp_path / "out.jsonl"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"objectives": [{"name": "help", "levels": 3}]}))
    argv = ["--data.dataset", src, "--moslim.format", "generic", "--moslim.output", str(out), "--moslim.spec"]
    argv += [str(spec), "--moslim.question_key", "[Fact: {fact}\\n\\n]{context}", "--moslim.response_key", "r"]
    assert main(argv + ["--moslim.placeholder", "_nofact"]) == 0
    assert [r["question"] for r in read_jsonl(out)] == ["Fact: Bread rises.\n\nA: hi", "A: hey", "A: yo", "A: [sic]"]
    # Without the placeholder flag the placeholder is text like any other; a required field stays required.
    assert main(argv) == 0
    assert read_jsonl(out)[1]["question"] == "Fact: _nofact\n\n\nA: hey"
    no_context = [rows[0], {"fact": "x", "r": "y", "help": 1}]
    with pytest.raises(ValueError, match=r"row 1: no question at '\[Fact: \{fact\}"):
        convert(
            load_spec(json.loads(spec.read_text())), "generic", "r.jsonl", no_context, "[Fact: {fact}]{context}", "r"
        )


@pytest.mark.unit
def test_prepare_ratings_help_shows_averaged_ratings_with_bins_and_its_spec_bins_real_averages(capsys, tmp_path):
    import yaml

    with pytest.raises(SystemExit):
        main(["-h"])
    text = capsys.readouterr().out
    assert "Averaged ratings" in text and "--moslim.placeholder" in text
    # The spec the help shows, run on the averages of three raters' 1-3 scores: the help cannot drift from the code.
    shown = text[text.index("    objectives:") :].split("\n\n")[0]
    spec = load_spec(yaml.safe_load(shown))
    averages = [1.0, 4 / 3, 5 / 3, 2.0, 7 / 3, 8 / 3, 3.0]
    rows = [{"question": "q", "response": "r", "Engaging": value} for value in averages]
    assert [r["labels"]["engaging"] for r in convert(spec, "generic", "usr.jsonl", rows)] == [0, 0, 1, 1, 1, 2, 2]


@pytest.mark.unit
def test_keep_fields_copies_a_source_column_into_every_row_for_the_split(tmp_path):
    spec = load_spec({"objectives": [{"name": "help", "levels": 3}]})
    rows = [{"question": "q", "response": "r", "help": 1, "meta": {"conv": "c7"}}]
    assert convert(spec, "generic", "r.jsonl", rows, keep=("meta.conv",))[0]["meta.conv"] == "c7"
    with pytest.raises(ValueError, match=r"row 0: no 'meta\.id' \(--moslim\.keep_fields\)"):
        convert(spec, "generic", "r.jsonl", rows, keep=("meta.id",))
    with pytest.raises(ValueError, match=r"keep_fields \['labels'\]: these names are the output's own fields"):
        convert(spec, "generic", "r.jsonl", rows, keep=("labels",))


@pytest.mark.unit
def test_rows_are_written_whole_or_not_at_all_and_a_value_json_cannot_hold_names_its_row(tmp_path):
    import datetime

    out = tmp_path / "ratings.jsonl"
    write_records([{"a": 1}, {"b": 2}], str(out))
    assert out.read_text() == '{"a": 1}\n{"b": 2}\n'
    rows = [{"a": 1}, {"when": datetime.date(2024, 5, 1)}]  # as a parquet file's date column reads back
    with pytest.raises(UserError, match=f"--moslim.output '{out}': row 1 holds a value JSON cannot write"):
        write_records(rows, str(out))
    assert out.read_text() == '{"a": 1}\n{"b": 2}\n'  # the earlier file is untouched, no half-written one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.jsonl"]
