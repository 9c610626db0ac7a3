"""Every `moslim-openrlhf` command in the fenced blocks of README.md and docs/usage.md runs as written (read from the
docs, so the test follows its edits). Commands that fit a CPU run on small files this test writes under the names
the README uses; the hub model of `train-rm` is swapped for a tiny local BERT (no machine here reaches the hub). A
command with a placeholder (`<your OpenRLHF flags>`) is checked against its `--help`: every --moslim.* flag it shows
must exist."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moslim_plugin.cli import COMMANDS
from moslim_plugin.cli import main as cli

README = Path(__file__).resolve().parent.parent / "README.md"
USAGE = README.parent / "docs" / "usage.md"  # "Your own ratings" lives there


def readme_commands() -> list[list[str]]:
    commands = []
    blocks = [b for doc in (README, USAGE) for b in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text("utf-8"), re.S)]
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip().startswith("moslim-openrlhf "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def write_inputs(folder: Path):
    """helpsteer2.jsonl (HelpSteer2's columns, 160 prompts), prompts.jsonl and my_ratings.jsonl: the README's files."""
    rows = [
        {"prompt": f"question {i}?", "response": "yes " * (i % 5), **{a: (i + k) % 5 for k, a in enumerate(ATTRS)}}
        for i in range(160)
    ]
    (folder / "helpsteer2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"input": f"Tell me about {t}."}) + "\n" for t in "abcd"))
    # The small-data recipe's rows (spec hh): 60 questions, two rated responses each.
    rated = [
        {"question": f"question {i}?", "response": answer, "labels": {"helpful": level, "harmless": None}}
        for i in range(60)
        for answer, level in (("Sure, here is how.", 1), ("No.", 0))
    ]
    (folder / "my_ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rated))
    # "Your own ratings" (docs/usage.md): its own spec, and rows rated by three raters (means), some without a fact.
    (folder / "my_spec.yaml").write_text(re.search(r"```yaml\n(.*?)```", USAGE.read_text(), re.S).group(1))
    means = [1.0, 4 / 3, 5 / 3, 2.0, 7 / 3, 8 / 3, 3.0]
    usr = [
        {"conversation_id": i // 2, "context": f"A: chat {i}", "fact": "_nofact\n" if i % 3 else f"Bread rises {i}.",
         "reply": f"reply {i}", "scores": {"engaging": means[i % 7]}}
        for i in range(14)
    ]  # fmt: skip
    (folder / "rated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in usr))


ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def help_text(command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "moslim_plugin", command, "--help"], capture_output=True, text=True, timeout=300
    )
    return result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, tiny_bert):
    commands = readme_commands()
    assert any(c[0] == "train-rm" for c in commands), "the README shows no train-rm command"
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path)
    threads = torch.get_num_threads()  # a command's --threads stays set in this process: put back after
    try:
        for argv in commands:
            assert argv[0] in COMMANDS, f"README command {argv[0]!r} is not a moslim-openrlhf command"
            if any(token.startswith("<") for token in argv):
                text = help_text(argv[0])
                for flag in (t for t in argv if t.startswith("--moslim.")):
                    assert flag in text, f"README flag {flag} of {argv[0]} is not in its --help"
                continue
            if argv[0] == "train-rm":
                at = argv.index("--model.model_name_or_path") + 1
                argv = [*argv[:at], str(tiny_bert), *argv[at + 1 :], "--data.max_len", "64"]
            assert cli(argv) == 0, argv
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "moslim-rm-eval" / "report.json").is_file() or not any(c[0] == "evaluate-rm" for c in commands)
    usr = [json.loads(line) for line in (tmp_path / "usr_ratings.jsonl").read_text().splitlines()]
    assert [r["labels"]["engaging"] for r in usr[:7]] == [0, 0, 1, 1, 1, 2, 2]  # the README's bins on the means
    assert usr[0]["question"] == "Fact: Bread rises 0.\n\nA: chat 0"
    assert usr[1]["question"] == "A: chat 1"  # the placeholder fact is left out, label and all
    assert usr[3]["conversation_id"] == 1
