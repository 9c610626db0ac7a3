"""The directive style travels as a flag through every path that writes a directive, and the label stays the truth."""

import json
from types import SimpleNamespace as NS

import pytest

from moslim_plugin import UserError
from moslim_plugin.core.directives import DEFAULT_STYLE, label_to_request, parse_directive, render_directive
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.datasets import main as prepare_prompts
from moslim_plugin.integration import launcher

HH = load_spec("hh")


@pytest.mark.unit
def test_bundled_specs_have_an_instruction_sentence_for_every_level():
    for name in ("helpsteer", "helpsteer2", "hh"):
        spec = load_spec(name)
        assert spec.has_instructions
        for objective in spec.objectives:
            assert len(set(objective.instructions)) == objective.levels
            for level in range(objective.levels):
                request = {objective.name: level}
                assert parse_directive(spec, render_directive(spec, request, "natural")) == request


@pytest.mark.unit
@pytest.mark.parametrize("style", ["natural", "tagged"])
def test_prepare_prompts_writes_the_chosen_style_and_the_same_label(tmp_path, style):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"input": f"Question {i}?"}) + "\n" for i in range(4)))
    out = tmp_path / f"{style}.jsonl"
    argv = ["--data.dataset", str(src), "--moslim.spec", "hh", "--moslim.output", str(out), "--moslim.sampling",
            "subset", "--moslim.seed", "3", "--moslim.placement", "user_suffix", "--moslim.style", style]  # fmt: skip
    assert prepare_prompts(argv) == 0
    for line in out.read_text().splitlines():
        row = json.loads(line)
        request = label_to_request(HH, row["label"])
        text = row["input"][-1]["content"]
        assert text == row["raw_question"] + "\n\n" + render_directive(HH, request, style)
        assert parse_directive(HH, text, style) == request  # the consistency check works in both styles


@pytest.mark.unit
def test_natural_style_is_the_default_and_the_launcher_refuses_it_for_a_spec_without_instructions(tmp_path):
    assert DEFAULT_STYLE == "natural"
    bare = tmp_path / "bare.yaml"
    bare.write_text("objectives:\n  - {name: helpful, levels: 2}\n")
    args = NS(
        data=NS(apply_chat_template=True, label_key="label"),
        reward=NS(model_name_or_path=None, remote_url="http://127.0.0.1:5000/get_reward"),
        train=NS(agent_func_path=None),
        algo=NS(advantage=NS(estimator="rloo")),
        critic=NS(model_name_or_path=None),
    )
    spec = load_spec(bare)
    flags, _ = launcher.split_argv(["--moslim.spec", str(bare), "--moslim.sampling", "uniform"])
    with pytest.raises(UserError, match="--moslim.style natural needs per-level 'instructions'"):
        launcher.check_sampling(flags, args, spec)
    flags, _ = launcher.split_argv(
        ["--moslim.spec", str(bare), "--moslim.sampling", "uniform", "--moslim.style", "tagged"]
    )
    assert launcher.check_sampling(flags, args, spec).style == "tagged"
