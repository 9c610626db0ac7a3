"""The one validation layer for values a user types: number ranges (argparse type and Python check alike), flags
generated from a config dataclass's field metadata, and output locations checked before any work."""

import argparse
import dataclasses
import json
import os
import sys

import pytest

from moslim_plugin import Range, UserError, port, positive, positive_int, probability, writable
from moslim_plugin.integration.reward_config import RewardConfig, add_flags


@pytest.mark.unit
@pytest.mark.parametrize(
    "kind, text, expected",
    [
        (positive_int, "0", "expected an integer >= 1, got 0"),
        (positive_int, "-3", "expected an integer >= 1, got -3"),
        (positive_int, "1.5", "expected an integer >= 1, got '1.5'"),
        (positive_int, "1e3", "expected an integer >= 1, got '1e3'"),
        (positive, "nan", "expected a finite number > 0, got nan"),
        (positive, "inf", "expected a finite number > 0, got inf"),
        (positive, "0", "expected a finite number > 0, got 0"),
        (probability, "1.01", r"expected a number in \[0, 1\], got 1.01"),
        (probability, "-0.1", r"expected a number in \[0, 1\], got -0.1"),
        (port, "0", r"expected an integer in \[1, 65535\], got 0"),
        (port, "65536", r"expected an integer in \[1, 65535\], got 65536"),
        (Range(float, 0, 1, high_open=True), "1", r"expected a number in \[0, 1\), got 1"),
        (Range(int, 1, special=(-1, "every epoch")), "0", r"expected -1 \(every epoch\) or an integer >= 1, got 0"),
        (Range(int, 1, special=(-1, "every epoch")), "-2", r"expected -1 \(every epoch\) or an integer >= 1, got -2"),
    ],
)
def test_a_number_flag_refuses_what_its_range_excludes_naming_the_range_and_the_value(kind, text, expected):
    with pytest.raises(argparse.ArgumentTypeError, match=expected):
        kind(text)


@pytest.mark.unit
def test_a_range_accepts_its_bounds_and_checks_python_values_as_the_flag_does():
    assert positive_int("1") == 1 and port("65535") == 65535 and probability("0") == 0.0 and probability("1") == 1.0
    assert positive("1e-9") == 1e-9 and isinstance(positive_int(" 7 "), int)
    assert positive_int.check(3, "--x") == 3
    assert Range(int, 1, special=(-1, "every epoch"))("-1") == -1  # the one value outside the range it names
    for value in (0, True, 2.0, "3", None, float("nan")):  # a bool is not a count, nor a float an integer
        with pytest.raises(UserError, match=f"--train.batch_size {value!r}: expected an integer >= 1"):
            positive_int.check(value, "--train.batch_size")


@pytest.mark.unit
def test_reward_flags_their_help_defaults_and_the_servers_comparison_come_from_reward_config_fields():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings[0].startswith("--moslim.")}
    fields = [f for f in dataclasses.fields(RewardConfig) if "help" in f.metadata]
    assert sorted(flags) == sorted(f"--moslim.{f.name}" for f in fields)  # one flag per field, no other
    defaults = RewardConfig()
    for f in fields:
        action = flags[f"--moslim.{f.name}"]
        default = getattr(defaults, f.name)
        # A dict travels as JSON text (OpenRLHF's hierarchize would turn it into a namespace); from_flags parses it.
        assert action.default == (json.dumps(default) if isinstance(default, dict) else default)
        assert action.help.startswith(f.metadata["help"]) and action.choices == f.metadata["choices"]
    assert "an integer >= 8; default: 512" in flags["--moslim.max_length"].help
    parsed = parser.parse_args(["--moslim.mapping_kwargs", '{"eps": 0.01}', "--moslim.max_length", "256"])
    flags_namespace = argparse.Namespace(**{k.split(".", 1)[1]: v for k, v in vars(parsed).items()})
    config = RewardConfig.from_flags(flags_namespace, "rm")
    assert config.mapping_kwargs == {"eps": 0.01} and config.max_length == 256 and config.template == "auto"

    # The server check compares exactly the fields marked `compared`: a server differing in any one is refused.
    compared = {f.name for f in dataclasses.fields(RewardConfig) if f.metadata.get("compared")}
    assert compared == set(RewardConfig.compared()) and {"mapping", "spec_fingerprint"} <= compared
    other = {"mapping": "expected_level", "mapping_kwargs": {"k": "all"}, "template": "llama3", "max_length": 256,
             "strict": True, "fallback_reward": -1.0, "max_error_share": 0.5, "error_window": 8, "batch_size": 4,
             "spec_fingerprint": "0" * 16, "device": "cpu", "dtype": "fp32", "rm_path": "/else"}  # fmt: skip
    ours = RewardConfig(spec_fingerprint="f" * 16)
    for name, value in other.items():
        health = {"reward_config": {**ours.to_dict(), name: value}}
        if name in compared:
            with pytest.raises(UserError, match=f"{name}: server {value!r}"):
                ours.check_server("http://h/get_reward", health)
        else:
            ours.check_server("http://h/get_reward", health)  # where the server runs its model is its own affair
    assert set(other) == {f.name for f in dataclasses.fields(RewardConfig)}  # every field was tried


@pytest.mark.unit
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("error_window", 0, "--moslim.error_window 0: expected an integer >= 1"),
        ("batch_size", -4, "--moslim.batch_size -4: expected an integer >= 1"),
        ("max_length", 12.5, "--moslim.max_length 12.5: expected an integer >= 8"),
        ("fallback_reward", float("inf"), "--moslim.fallback_reward inf: expected a finite number"),
        ("strict", "yes", "--moslim.strict 'yes': expected a bool"),
        ("dtype", "int8", r"--moslim.dtype 'int8': expected one of \['fp32', 'bf16', 'fp16'\]"),
        ("mapping_kwargs", "[]", "--moslim.mapping_kwargs '\\[\\]': expected a dict"),
        ("device", "gpu0", "--moslim.device 'gpu0': not a torch device"),
    ],
)
def test_a_reward_configuration_read_back_from_json_is_checked_as_its_flags_are(tmp_path, field, value, message):
    # The `.py` reward function reads its configuration from the job's env: the same checks, the flag's name.
    from helpers_reward import write_config_only_rm

    config = RewardConfig.from_dict({"rm_path": str(write_config_only_rm(tmp_path / "rm")), field: value})
    with pytest.raises(UserError, match=message):
        config.validate()


@pytest.mark.unit
def test_an_output_location_that_cannot_be_written_is_refused_before_any_work_and_nothing_is_made(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match=f"--out '{a_file}': a file, not a folder"):
        writable(a_file, "--out")
    with pytest.raises(UserError, match=f"--out '{tmp_path}': a folder, not a file"):
        writable(tmp_path, "--out", folder=False)
    with pytest.raises(UserError, match=f"cannot be written \\({a_file} is a file, not a folder\\)"):
        writable(a_file / "sub" / "out.jsonl", "--moslim.output", folder=False)
    writable(tmp_path / "new" / "deeper", "--out")  # fine, and made later by the run, not here
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]
    if sys.platform.startswith("linux"):  # sysfs takes no new file, not even from root
        with pytest.raises(UserError, match="--out '/sys/moslim-out': cannot be written in /sys"):
            writable("/sys/moslim-out", "--out")


@pytest.mark.unit
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_epochs", 0, "--train.max_epochs 0: expected an integer >= 1"),
        ("lr", float("nan"), "--adam.lr nan: expected a finite number > 0"),
        ("adam_betas", [0.9, 1.0], r"--adam.betas 1.0: expected a number in \[0, 1\)"),
        ("eval_ratio", 1.0, r"--moslim.eval_ratio 1.0: expected a number in \(0, 1\)"),
        ("eval_steps", 0, r"--eval.steps 0: expected -1 \(every epoch\) or an integer >= 1"),
        ("max_samples", -1, "--data.max_samples -1: expected an integer >= 1"),
        ("label_smoothing", 1, r"--moslim.label_smoothing 1: expected a number in \[0, 1\)"),
    ],
)
def test_a_train_rm_config_made_in_python_is_refused_as_its_flag_would_be(field, value, message):
    from moslim_plugin.data.rm_config import TrainRMConfig

    with pytest.raises(UserError, match=message):
        TrainRMConfig(model_name_or_path="backbone", spec="hh", **{field: value})
    assert TrainRMConfig(model_name_or_path="backbone", spec="hh", eval_steps=-1, max_steps=-1).max_epochs == 1
