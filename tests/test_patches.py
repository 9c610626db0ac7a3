"""Runtime patches of OpenRLHF: fingerprints, idempotent apply/revert, refusal on changed upstream code, the
upstream diff, and OpenRLHF's own PromptDataset conditioned through the dataset patch. (Activation in Ray workers,
applied when OpenRLHF imports the patched module, is tested in test_ray_integration.py.)"""

import dataclasses
import gzip
import importlib.abc
import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from moslim_plugin.integration import launcher, patches
from moslim_plugin.integration.vllm_stub import PATH as VLLM_STUB_PATH

ROOT = Path(__file__).parent.parent
VLLM_STUB = Path(VLLM_STUB_PATH)
DIFF = ROOT / "patches" / "openrlhf-0.11.2-moslim.diff"
PROMPT_DATASET = next(p for p in patches.PATCHES if p.name == "prompt_dataset")


def openrlhf_dir() -> Path:
    return Path(importlib.util.find_spec("openrlhf").origin).parent


@pytest.fixture
def reverted():
    yield
    patches.revert()


@pytest.mark.integration
def test_every_patch_still_matches_the_installed_openrlhf_source(monkeypatch):
    stub = importlib.util.find_spec("vllm") is None
    if stub:
        monkeypatch.syspath_prepend(str(VLLM_STUB))  # openrlhf.trainer.ray imports vLLM at module level
    for patch in (*patches.PATCHES, patches.HIERARCHIZE):
        patch.check(patch.resolve()[2])  # raises PatchError on any difference
    if stub:  # later tests must not mistake the stub for an installed vLLM
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            del sys.modules[name]


@pytest.mark.integration
def test_apply_is_idempotent_and_revert_restores_the_original(reverted):
    from openrlhf.datasets.prompts_dataset import PromptDataset

    original = PromptDataset.__init__
    patches.apply(PROMPT_DATASET)
    wrapped = PromptDataset.__init__
    assert wrapped is not original and wrapped.__moslim_patch__ == "prompt_dataset"
    patches.apply(PROMPT_DATASET)
    patches.apply_on_import([PROMPT_DATASET])  # module already imported: applies now, still once
    assert PromptDataset.__init__ is wrapped and patches.applied() == ["prompt_dataset"]
    patches.revert()
    assert PromptDataset.__init__ is original and patches.applied() == []


@pytest.fixture
def altered_prompts_dataset(tmp_path):
    """A copy of OpenRLHF's prompts_dataset.py with one line of PromptDataset.__init__ changed, importable by name."""
    source = (openrlhf_dir() / "datasets" / "prompts_dataset.py").read_text()
    changed = source.replace('desc="Preprocessing data"', 'desc="Preprocessing rows"')
    assert changed != source
    (tmp_path / "altered_prompts_dataset.py").write_text(changed)
    sys.path.insert(0, str(tmp_path))
    yield dataclasses.replace(PROMPT_DATASET, target="altered_prompts_dataset:PromptDataset.__init__")
    sys.path.remove(str(tmp_path))
    sys.modules.pop("altered_prompts_dataset", None)


@pytest.mark.integration
def test_a_changed_upstream_source_fails_the_fingerprint_check(altered_prompts_dataset, reverted, monkeypatch):
    monkeypatch.delenv(patches.ALLOW_ENV, raising=False)
    with pytest.raises(patches.PatchError, match=r"source of altered_prompts_dataset:PromptDataset\.__init__ changed"):
        patches.apply(altered_prompts_dataset)
    assert patches.applied() == []
    # The explicit override applies it anyway, loudly.
    monkeypatch.setenv(patches.ALLOW_ENV, "1")
    with pytest.warns(UserWarning, match="applying anyway"):
        patches.apply(altered_prompts_dataset)
    assert patches.applied() == ["prompt_dataset"]


@pytest.mark.integration
def test_an_unsupported_openrlhf_release_is_refused_with_both_versions(monkeypatch):
    from openrlhf.datasets.prompts_dataset import PromptDataset

    monkeypatch.delenv(patches.ALLOW_ENV, raising=False)
    future = dataclasses.replace(PROMPT_DATASET, versions=("0.12.0",))
    with pytest.raises(patches.PatchError, match=r"installed OpenRLHF is 0\.11\.2, this patch supports 0\.12\.0"):
        future.check(PromptDataset.__dict__["__init__"])


@pytest.mark.integration
def test_the_upstream_diff_still_applies_to_the_installed_openrlhf(tmp_path):
    shutil.copytree(openrlhf_dir(), tmp_path / "openrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    dry = subprocess.run(["patch", "-p1", "--dry-run", "-i", str(DIFF)], cwd=tmp_path, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    subprocess.run(["patch", "-p1", "-s", "-i", str(DIFF)], cwd=tmp_path, check=True)
    changed = [line.split()[-1][2:] for line in DIFF.read_text().splitlines() if line.startswith("+++ ")]
    assert len(changed) == 4
    for path in changed:  # the patched files are still valid Python
        compile((tmp_path / path).read_text(), path, "exec")


def hh_prompt_rows(shared_data, n):
    rows = []
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as f:
        for line in itertools.islice(f, n):
            chosen = json.loads(line)["chosen"]
            rows.append({"input": chosen.split("\n\nAssistant:")[0].split("\n\nHuman: ", 1)[1].strip()})
    return rows


@pytest.mark.integration
def test_openrlhfs_prompt_dataset_built_through_the_hook_matches_prepare_prompts(
    tmp_path, smollm2_dir, reverted, shared_data
):
    from openrlhf.datasets import PromptDataset
    from openrlhf.datasets.utils import blending_datasets
    from transformers import AutoTokenizer

    from moslim_plugin.core.directives import apply_directive, label_to_request, parse_directive, request_to_label
    from moslim_plugin.core.spec import load_spec
    from moslim_plugin.data import datasets

    spec = load_spec("hh")
    rows = hh_prompt_rows(shared_data, 6)
    already = request_to_label(spec, {"harmless": 1})
    # A prompt that already carries a MOSLIM label and the matching directive passes through.
    rows[2] = {"input": apply_directive(spec, {"harmless": 1}, rows[2]["input"]), "label": already}
    data_file = tmp_path / "prompts.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    flags = ["--moslim.spec", "hh", "--moslim.sampling", "subset", "--moslim.seed", "11", "--moslim.placement",
             "user_prefix"]  # fmt: skip

    strategy = hook_strategy(flags, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)

    patches.apply(PROMPT_DATASET)
    dataset = PromptDataset(blending_datasets(str(data_file), None, strategy), tokenizer, strategy)

    # The offline command on the same file with the same seed and placement.
    out = tmp_path / "conditioned.jsonl"
    offline_flags = ["--data.dataset", str(data_file), "--moslim.output", str(out), *flags]
    assert datasets.main(offline_flags) == 0
    offline = [json.loads(line) for line in out.read_text().splitlines()]
    assert dataset.labels == [row["label"] for row in offline]
    chats = [row["input"] if isinstance(row["input"], list) else [{"role": "user", "content": row["input"]}]
             for row in offline]  # fmt: skip
    expected = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    assert dataset.prompts == expected
    assert dataset.labels[2] == already
    for i in range(6):
        assert parse_directive(spec, dataset.prompts[i]) == label_to_request(spec, dataset.labels[i])


def hook_strategy(flags, tmp_path):
    """The strategy OpenRLHF hands PromptDataset, with args.moslim as the launcher builds it (MOSLIM RM: hh)."""
    from helpers_reward import write_config_only_rm

    args = NS(
        data=NS(apply_chat_template=True, label_key="label", input_key="input"),
        reward=NS(model_name_or_path=str(write_config_only_rm(tmp_path / "rm", "hh")), remote_url=None),
        train=NS(agent_func_path=None),
        algo=NS(advantage=NS(estimator="rloo")),
        use_ms=False,
    )
    args.moslim = launcher.check_moslim_args(launcher.split_argv(flags)[0], args)
    return NS(args=args, is_rank_0=lambda: True, print=lambda *a: None)


@pytest.mark.integration
@pytest.mark.parametrize(
    "directive, label, message",
    [
        (None, {"harmless": 1}, "the label requests {'harmless': 1} but the prompt has no valid directive"),
        ({"harmless": 0}, {"harmless": 1}, "the prompt's directive requests {'harmless': 0}"),
        ({"harmless": 0}, {}, r"requests no objective \(targets {}\)"),
    ],
)
def test_a_label_that_disagrees_with_its_prompt_is_refused_by_prepare_prompts_and_by_the_dataset_hook(
    tmp_path, smollm2_dir, reverted, directive, label, message
):
    from openrlhf.datasets import PromptDataset
    from transformers import AutoTokenizer

    from moslim_plugin.core.directives import apply_directive, request_to_label
    from moslim_plugin.core.spec import load_spec
    from moslim_plugin.data import datasets

    spec = load_spec("hh")
    question = "How do I bake bread?"
    prompt = apply_directive(spec, directive, question) if directive is not None else question
    rows = [{"input": "Hi there."}, {"input": prompt, "label": request_to_label(spec, label)}]
    data_file = tmp_path / "prompts.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flags = ["--moslim.spec", "hh", "--moslim.sampling", "subset"]
    with pytest.raises(ValueError, match=f"row 1: .*{message}"):
        datasets.main(["--data.dataset", str(data_file), "--moslim.output", str(tmp_path / "out.jsonl"), *flags])
    patches.apply(PROMPT_DATASET)
    with pytest.raises(ValueError, match=f"row 1: .*{message}"):
        PromptDataset(rows, AutoTokenizer.from_pretrained(smollm2_dir), hook_strategy(flags, tmp_path))


@pytest.mark.integration
def test_a_refused_patch_stays_refused_on_every_later_import(altered_prompts_dataset, reverted, monkeypatch):
    import importlib

    monkeypatch.delenv(patches.ALLOW_ENV, raising=False)
    patches.apply_on_import([altered_prompts_dataset])
    for _ in range(2):  # the second import must not hand out the unpatched module
        with pytest.raises(patches.PatchError, match="source of altered_prompts_dataset"):
            importlib.import_module("altered_prompts_dataset")
        assert "altered_prompts_dataset" not in sys.modules and patches.applied() == []
    monkeypatch.setenv(patches.ALLOW_ENV, "1")  # the explicit override still works afterwards
    with pytest.warns(UserWarning, match="applying anyway"):
        module = importlib.import_module("altered_prompts_dataset")
    assert module.PromptDataset.__init__.__moslim_patch__ == "prompt_dataset"


class AskEveryFinder(importlib.abc.MetaPathFinder):
    """A finder built like the plugin's (it asks every other finder, the plugin's included), as another package or a
    test harness may install: it records what it found and finds nothing itself."""

    def __init__(self, name):
        self.name, self.found = name, []

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    self.found.append(spec.name)
                    return spec
        return None


@pytest.mark.integration
def test_patching_on_import_coexists_with_another_finder_that_asks_every_finder(
    altered_prompts_dataset, reverted, monkeypatch
):
    import importlib

    monkeypatch.setenv(patches.ALLOW_ENV, "1")  # the altered copy: only the import path is under test here
    other = AskEveryFinder("altered_prompts_dataset")
    monkeypatch.setattr(sys, "meta_path", [other, *sys.meta_path])
    patches.apply_on_import([altered_prompts_dataset])
    with pytest.warns(UserWarning, match="applying anyway"):
        module = importlib.import_module("altered_prompts_dataset")  # no endless finder recursion
    assert module.PromptDataset.__init__.__moslim_patch__ == "prompt_dataset"
    assert "altered_prompts_dataset" in other.found


DIFF_WORLD = """
import json, pickle, sys, types
sys.path.insert(0, sys.argv[1])  # the patched copy of OpenRLHF comes first
from openrlhf.datasets import PromptDataset
from transformers import AutoTokenizer
import openrlhf

args = pickle.load(open(sys.argv[2], "rb"))
# the launcher adds it (patching off)
args.data.preprocess_fn = "moslim_plugin.integration.dataset_hook:preprocess_row"
strategy = types.SimpleNamespace(args=args, is_rank_0=lambda: False, print=lambda *a: None)
rows = [json.loads(line) for line in open(sys.argv[3])]
dataset = PromptDataset(rows, AutoTokenizer.from_pretrained(sys.argv[4]), strategy)
patched = getattr(PromptDataset.__init__, "__moslim_patch__", None)
out = {"file": openrlhf.__file__, "patched": patched, "prompts": dataset.prompts, "labels": dataset.labels}
print(json.dumps(out))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_the_diffs_preprocess_hook_conditions_prompts_as_the_runtime_patch_does(
    tmp_path, smollm2_dir, reverted, shared_data
):
    import os
    import pickle

    from openrlhf.datasets import PromptDataset
    from transformers import AutoTokenizer

    shutil.copytree(openrlhf_dir(), tmp_path / "o" / "openrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["patch", "-p1", "-s", "-i", str(DIFF)], cwd=tmp_path / "o", check=True)
    rows = hh_prompt_rows(shared_data, 4)
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    strategy = hook_strategy(["--moslim.spec", "hh", "--moslim.sampling", "subset", "--moslim.seed", "5"], tmp_path)
    (tmp_path / "args.pkl").write_bytes(pickle.dumps(strategy.args))
    env = dict(os.environ, **{patches.RUNTIME_ENV: "0"})
    argv = [str(tmp_path / "o"), str(tmp_path / "args.pkl"), str(data_file), str(smollm2_dir)]
    out = subprocess.run(
        [sys.executable, "-c", DIFF_WORLD, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    upstream = json.loads(out.stdout.strip().splitlines()[-1])
    assert upstream["file"].startswith(str(tmp_path)) and upstream["patched"] is None

    patches.apply(PROMPT_DATASET)
    runtime = PromptDataset(rows, AutoTokenizer.from_pretrained(smollm2_dir), strategy)
    assert upstream["prompts"] == runtime.prompts and upstream["labels"] == runtime.labels
    from moslim_plugin.core.directives import label_to_request, parse_directive
    from moslim_plugin.core.spec import load_spec

    spec = load_spec("hh")  # the prompts carry the directive their label asks for (natural style by default)
    assert all(
        parse_directive(spec, p) == label_to_request(spec, lb) for p, lb in zip(runtime.prompts, runtime.labels)
    )


@pytest.mark.unit
def test_with_runtime_patching_off_the_launcher_plugs_in_through_the_diffs_flags():
    off = {patches.RUNTIME_ENV: "0"}
    assert launcher.diff_extension_flags(["--x", "1"], {}) == []
    assert launcher.diff_extension_flags([], off) == [
        "--reward.actor_class", "moslim_plugin.integration.ray_reward:MoslimRewardModelActor",
        "--data.preprocess_fn", "moslim_plugin.integration.dataset_hook:preprocess_row",
    ]  # fmt: skip
    assert "--reward.actor_class" not in launcher.diff_extension_flags(["--reward.actor_class", "mine:Actor"], off)
