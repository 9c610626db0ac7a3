import collections
import json

import pytest

from moslim_plugin import UserError
from moslim_plugin.core.directives import apply_directive, label_to_request, parse_directive, request_to_label
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.datasets import TargetSampler, condition_row, condition_rows, main

SPEC = load_spec("helpsteer")  # helpfulness (5 levels), verbosity (5), harmlessness (2)
KEYS = dict(input_key="question", label_key="label")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.unit
def test_sampled_targets_depend_only_on_seed_and_row_index():
    a, b = TargetSampler(SPEC, "subset", seed=7), TargetSampler(SPEC, "subset", seed=7)
    forward = [a.sample({}, i) for i in range(50)]
    backward = [b.sample({}, i) for i in reversed(range(50))][::-1]
    assert forward == backward
    assert forward != [TargetSampler(SPEC, "subset", seed=8).sample({}, i) for i in range(50)]


@pytest.mark.unit
def test_uniform_sampling_requests_every_objective_with_all_levels_about_equally():
    sampler = TargetSampler(SPEC, "uniform", seed=0)
    requests = [sampler.sample({}, i) for i in range(2000)]
    assert all(list(r) == list(SPEC.names) for r in requests)
    counts = collections.Counter(r["helpfulness"] for r in requests)
    assert sorted(counts) == [0, 1, 2, 3, 4] and min(counts.values()) > 340  # 400 expected per level


@pytest.mark.unit
def test_subset_sampling_masks_objectives_but_always_requests_one():
    sampler = TargetSampler(SPEC, "subset", seed=0)
    subsets = collections.Counter(tuple(sampler.sample({}, i)) for i in range(700))
    assert all(len(s) >= 1 for s in subsets)
    assert len(subsets) == 7  # every non-empty subset of 3 objectives occurs


@pytest.mark.unit
def test_single_sampling_requests_one_objective_each_about_equally_often():
    sampler = TargetSampler(SPEC, "single", seed=0)
    requests = [sampler.sample({}, i) for i in range(900)]
    assert all(len(r) == 1 for r in requests)
    counts = collections.Counter(next(iter(r)) for r in requests)
    assert sorted(counts) == sorted(SPEC.names) and min(counts.values()) > 250  # 300 expected each


@pytest.mark.unit
def test_level_weights_skew_the_drawn_levels_and_unweighted_draws_keep_their_stream():
    weighted = TargetSampler(SPEC, "subset", seed=0, weights={"harmlessness": (1, 3)})
    levels = collections.Counter(
        r["harmlessness"] for r in (weighted.sample({}, i) for i in range(2000)) if "harmlessness" in r
    )
    assert 2.5 < levels[1] / levels[0] < 3.5
    # Objectives without weights, and samplers without any, draw exactly as before weights existed.
    plain = TargetSampler(SPEC, "uniform", seed=3)
    assert [plain.sample({}, i) for i in range(5)] == [TargetSampler(SPEC, "uniform", 3, weights={}).sample({}, i)
                                                       for i in range(5)]  # fmt: skip
    with pytest.raises(UserError, match=r"level weights for 'harmlessness': expected 2 positive numbers, got \[1\]"):
        TargetSampler(SPEC, "subset", weights={"harmlessness": (1,)})
    with pytest.raises(UserError, match="level weights: unknown objective 'brevity'"):
        TargetSampler(SPEC, "subset", weights={"brevity": (1, 1)})


@pytest.mark.unit
def test_excluded_requests_are_never_drawn_but_their_parts_are():
    spec = load_spec({"objectives": [{"name": "a", "levels": 2}, {"name": "b", "levels": 2}]})
    held_out = {"a": 1, "b": 1}
    sampler = TargetSampler(spec, "subset", seed=0, exclude=[held_out])
    drawn = [sampler.sample({}, i) for i in range(400)]
    assert held_out not in drawn
    assert {"a": 1} in drawn and {"b": 1} in drawn and {"a": 0, "b": 1} in drawn
    with pytest.raises(UserError, match="1000 draws in a row hit the excluded requests"):
        TargetSampler(spec, "uniform", exclude=[{"a": x, "b": y} for x in (0, 1) for y in (0, 1)]).sample({}, 0)
    with pytest.raises(UserError, match="not to sampling mode 'fixed'"):
        TargetSampler(spec, "fixed", fixed={"a": 1}, exclude=[held_out])


@pytest.mark.unit
def test_fixed_targets_are_checked_against_the_spec():
    assert TargetSampler(SPEC, "fixed", fixed={"verbosity": 1}).sample({}, 3) == {"verbosity": 1}
    with pytest.raises(ValueError, match="--moslim.fixed: level 5 for 'harmlessness' is out of range"):
        TargetSampler(SPEC, "fixed", fixed={"harmlessness": 5})
    with pytest.raises(ValueError, match="unknown objective 'brevity'"):
        TargetSampler(SPEC, "fixed", fixed={"brevity": 1})


@pytest.mark.unit
def test_column_targets_skip_empty_cells_and_reject_out_of_range_levels():
    sampler = TargetSampler(SPEC, "column", columns={"helpfulness": "h", "harmlessness": "safe"})
    assert sampler.sample({"h": 4, "safe": None}, 0) == {"helpfulness": 4}
    assert sampler.sample({"h": 2.0, "safe": "harmless"}, 1) == {"helpfulness": 2, "harmlessness": 1}
    with pytest.raises(ValueError, match="row 9: level 7 for 'helpfulness' is out of range"):
        sampler.sample({"h": 7, "safe": 0}, 9)
    with pytest.raises(ValueError, match="row 2: no column 'h'"):
        sampler.sample({"safe": 0}, 2)


@pytest.mark.unit
def test_condition_row_places_directive_in_system_message_and_keeps_raw_question():
    row = {"question": "How do magnets work?", "id": 3}
    out = condition_row(row, SPEC, TargetSampler(SPEC, "fixed", fixed={"helpfulness": 4}), 0, **KEYS)
    assert out["question"][0]["role"] == "system"
    assert out["question"][1] == {"role": "user", "content": row["question"]}
    assert parse_directive(SPEC, out["question"][0]["content"]) == {"helpfulness": 4}
    assert label_to_request(SPEC, out["label"]) == {"helpfulness": 4}
    assert out["raw_question"] == row["question"] and out["id"] == 3 and row == {"question": row["question"], "id": 3}


@pytest.mark.unit
def test_rows_already_carrying_a_moslim_label_pass_through_unchanged():
    labelled = {
        "question": apply_directive(SPEC, {"verbosity": 0}, "hi"),
        "label": request_to_label(SPEC, {"verbosity": 0}),
    }
    sampler = TargetSampler(SPEC, "uniform")
    assert condition_row(labelled, SPEC, sampler, 0, **KEYS) is labelled
    with pytest.raises(ValueError, match="non-MOSLIM label '42'"):
        condition_row({"question": "hi", "label": "42"}, SPEC, sampler, 0, **KEYS)
    other_spec = {"question": "hi", "label": request_to_label(load_spec("hh"), {"helpful": 1})}
    with pytest.raises(ValueError, match="prepare the prompts again"):
        condition_row(other_spec, SPEC, sampler, 0, **KEYS)


@pytest.mark.integration
def test_prepare_prompts_is_reproducible_and_reads_what_blending_datasets_reads(tmp_path, capsys):
    from datasets import Dataset

    rows = [{"question": f"Question number {i}?", "topic": i % 3} for i in range(30)]
    src = write_jsonl(tmp_path / "prompts.jsonl", rows)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "prompts.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "prompts_disk"))
    base = ["--data.input_key", "question", "--moslim.spec", "helpsteer", "--moslim.sampling", "subset"]
    outputs = []
    for i, dataset in enumerate([src, src, str(tmp_path / "prompts.parquet"), str(tmp_path / "prompts_disk")]):
        out = str(tmp_path / f"out{i}.jsonl")
        assert main(base + ["--data.dataset", dataset, "--moslim.output", out]) == 0
        outputs.append(read_jsonl(out))
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    assert [r["raw_question"] for r in outputs[0]] == [r["question"] for r in rows]
    # The offline command and the dataset-hook helper give the same rows for the same seed.
    hook = condition_rows(rows, SPEC, TargetSampler(SPEC, "subset", seed=42), question_key="raw_question", **KEYS)
    assert hook == outputs[0]
    summary = capsys.readouterr().out
    assert "30 prompts" in summary and "helpfulness" in summary and "harmlessness" in summary


@pytest.mark.integration
def test_prepared_rows_go_through_openrlhf_prompt_preprocessing_with_a_chat_template(tmp_path, smollm2_dir):
    from openrlhf.datasets.prompts_dataset import preprocess_data
    from transformers import AutoTokenizer

    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Name a prime number."}])
    out = tmp_path / "conditioned"  # a folder: written with datasets' save_to_disk
    argv = ["--data.dataset", src, "--data.input_key", "prompt", "--moslim.spec", "helpsteer"]
    main(argv + ["--moslim.output", str(out), "--moslim.sampling", "fixed", "--moslim.fixed", "verbosity=0",
                 "--moslim.style", "tagged"])  # fmt: skip
    from datasets import load_from_disk

    row = load_from_disk(str(out))[0]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt, label = preprocess_data(row, None, "prompt", "label", apply_chat_template=tokenizer.apply_chat_template)
    assert prompt.startswith("<|im_start|>system\n[Preferences] verbosity: 0/4")
    assert "Name a prime number." in prompt and label_to_request(SPEC, label) == {"verbosity": 0}


@pytest.mark.unit
def test_bad_prompt_files_fail_naming_file_and_row(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="empty.jsonl: the dataset is empty"):
        condition_rows([], SPEC, TargetSampler(SPEC), source=empty, **KEYS)
    with pytest.raises(ValueError, match=r"p\.jsonl: row 1: no input column 'question'"):
        condition_rows([{"question": "a"}, {"text": "b"}], SPEC, TargetSampler(SPEC), source="p.jsonl", **KEYS)
    with pytest.raises(UserError, match="no such file"):  # one line from the CLI, not a traceback
        main(["--data.dataset", str(tmp_path / "nope.jsonl"), "--moslim.spec", "hh", "--moslim.output", "x.jsonl"])
