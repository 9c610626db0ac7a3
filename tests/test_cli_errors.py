"""Every user error of every subcommand is one line on stderr with exit code 2; our bugs keep their traceback. Data
files are handled (.txt, .jsonl.gz, empty). The catalogue of bad inputs, one line per case, is test_bad_inputs.py."""

import gzip
import json

import pytest

from moslim_plugin.cli import COMMANDS, main


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.unit
def test_bad_flag_values_are_one_line_with_exit_code_2_for_every_subcommand(capsys):
    for command in [c for c in COMMANDS if c != "train_ppo_ray"]:  # its parser: test_train_ppo_ray_prints_...
        one_line_error(capsys, [command, "--no-such-flag", "1"], f"moslim-openrlhf {command}: error:")
    one_line_error(
        capsys,
        ["train-rm", "--model.model_name_or_path", "m", "--moslim.spec", "hh", "--train.batch_size", "eight"],
        "--train.batch_size: expected an integer >= 1, got 'eight'",
    )


@pytest.mark.unit
def test_bad_files_and_rows_are_one_line_naming_the_file_and_line(capsys, tmp_path):
    bad = tmp_path / "ratings.jsonl"
    bad.write_text('{"question": "q", "response": "r", "labels": {}}\n{"question": \n')
    argv = ["train-rm", "--model.model_name_or_path", "m", "--moslim.spec", "hh", "--data.dataset"]
    one_line_error(capsys, argv + [str(bad)], f"{bad}: line 2 is not valid JSON")
    one_line_error(capsys, argv + [str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file")
    cut = tmp_path / "ratings.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"question": "q", "response": "r", "labels": {"helpful": 1}}\n' * 200)[:60])
    one_line_error(capsys, argv + [str(cut)], f"{cut}: cannot be read", "EOFError")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "q", "response": "r", "labels": {"helpful": 7}}) + "\n")
    one_line_error(capsys, argv + [str(rows)], "rows.jsonl: row 0: labels: level 7 for 'helpful' is out of range")
    spec = ["--moslim.spec", "hh", "--moslim.output", str(tmp_path / "out.jsonl")]
    one_line_error(
        capsys, ["evaluate-rm", "--model", str(tmp_path), "--data.dataset", str(rows)], "not a reward-model"
    )
    missing = str(tmp_path / "no-policy")
    one_line_error(capsys, ["evaluate", "--actor.model_name_or_path", missing], f"policy {missing!r}: not a model")
    one_line_error(
        capsys, ["prepare-ratings", "--moslim.format", "hh_rlhf", "--data.dataset", str(cut), *spec], str(cut)
    )


@pytest.mark.unit
def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    # A command whose main has a bug (not a UserError): the exception must propagate, traceback and all.
    (tmp_path / "buggy_command.py").write_text("def main(argv):\n    return {}['missing']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "buggy", ("buggy_command", "a command with a bug"))
    with pytest.raises(KeyError, match="missing"):
        main(["buggy"])


@pytest.mark.integration
def test_prompt_files_txt_gz_and_empty_are_handled(capsys, tmp_path):
    out = tmp_path / "prompts.jsonl"
    args = ["--moslim.spec", "hh", "--moslim.output", str(out), "--moslim.sampling", "uniform"]
    txt = tmp_path / "prompts.txt"
    txt.write_text("How do I bake bread?\n\nWhat is the capital of France?\n")
    assert main(["prepare-prompts", "--data.dataset", str(txt), *args]) == 0
    assert [json.loads(line)["raw_question"] for line in out.read_text().splitlines()] == [
        "How do I bake bread?",
        "What is the capital of France?",
    ]
    gz = tmp_path / "prompts.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"input": "one?"}\n{"input": "two?"}\n'))
    assert main(["prepare-prompts", "--data.dataset", str(gz), *args]) == 0
    assert len(out.read_text().splitlines()) == 2
    capsys.readouterr()
    for empty in ("empty.txt", "empty.jsonl"):
        (tmp_path / empty).write_text("")
        one_line_error(capsys, ["prepare-prompts", "--data.dataset", str(tmp_path / empty), *args], empty, "empty")
    gz.write_bytes(gz.read_bytes()[:20])
    one_line_error(capsys, ["prepare-prompts", "--data.dataset", str(gz), *args], f"{gz}: cannot be read")


@pytest.mark.unit
def test_the_diffs_entry_point_prints_a_moslim_flag_error_as_one_line_with_exit_code_2(capsys, tmp_path):
    # python -m openrlhf.cli.train_ppo_ray with patches/openrlhf-0.11.2-moslim.diff: OpenRLHF's own main calls the
    # function add_arguments returned, not `moslim-openrlhf`, so that function prints the error itself.
    from types import SimpleNamespace

    from moslim_plugin.integration import launcher

    moslim, _ = launcher.split_argv(["--moslim.spec", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit) as exit_info:
        launcher.finish_diff_args(SimpleNamespace(moslim=moslim))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"moslim-openrlhf train_ppo_ray: error: {tmp_path / 'missing.yaml'}: no such spec file")


@pytest.mark.unit
def test_device_cuda_without_a_gpu_is_a_one_line_error_in_the_demo_train_rm_and_evaluate(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    message = "--device cuda: this torch build sees no CUDA device"
    one_line_error(capsys, ["demo", "--demo.size", "gpu", "--device", "cuda", "--out", str(tmp_path)], message)
    assert not (tmp_path / "samples.jsonl").exists()  # stopped before any stage
    rm = ["train-rm", "--model.model_name_or_path", "m", "--moslim.spec", "hh", "--data.dataset", "rows.jsonl"]
    one_line_error(capsys, [*rm, "--device", "cuda"], message)
    one_line_error(capsys, ["evaluate", "--actor.model_name_or_path", "p", "--device", "cuda"], message)
