import json
import subprocess
import sys

import pytest
import torch

from moslim_plugin import UserError
from moslim_plugin.integration import compat


@pytest.mark.unit
def test_shim_padding_helpers_round_trip_exactly():
    from flash_attn.bert_padding import index_first_axis, pad_input, unpad_input

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    hidden = torch.randn(3, 4, 5)
    flat, indices, cu_seqlens, max_len, used = unpad_input(hidden, mask)
    assert flat.shape == (9, 5)
    assert cu_seqlens.tolist() == [0, 3, 5, 9] and max_len == 4 and used.tolist() == [3, 2, 4]
    back = pad_input(flat, indices, 3, 4)
    assert torch.equal(back * mask[..., None], hidden * mask[..., None])
    assert torch.equal(index_first_axis(hidden.reshape(12, 5), indices), flat)


@pytest.mark.unit
def test_shim_has_no_flash_attn_ops_so_openrlhf_uses_torch_cross_entropy():
    from openrlhf.models.utils import log_probs_from_logits

    with pytest.raises(ImportError):
        import flash_attn.ops.triton.cross_entropy  # noqa: F401
    logits, labels = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(log_probs_from_logits(logits, labels), expected)


@pytest.mark.unit
def test_packing_ring_attention_and_flash_attention_2_without_flash_attn_are_refused_by_name():
    from types import SimpleNamespace as NS

    if compat.real_flash_attn_available():
        pytest.skip("real flash-attn installed: nothing to refuse")
    with pytest.raises(ValueError, match="--ds.packing_samples"):
        compat.check_args(NS(ds=NS(packing_samples=True, ring_attn_size=1, attn_implementation="sdpa")))
    with pytest.raises(ValueError, match="--ds.ring_attn_size 2"):
        compat.check_args(NS(ds=NS(packing_samples=False, ring_attn_size=2, attn_implementation="sdpa")))
    with pytest.raises(RuntimeError, match="ring attention needs the real flash-attn"):
        from flash_attn.utils.distributed import all_gather

        all_gather(torch.zeros(1))
    with pytest.raises(UserError, match="flash_attention_2 .*: pass --ds.attn_implementation sdpa"):
        compat.check_args(NS(ds=NS(packing_samples=False, ring_attn_size=1, attn_implementation="flash_attention_2")))
    compat.check_args(NS(ds=NS(packing_samples=False, ring_attn_size=1, attn_implementation="sdpa")))


@pytest.mark.integration
def test_openrlhfs_default_attention_without_flash_attn_stops_train_ppo_ray_in_one_line_with_exit_2(tmp_path):
    # A subprocess: the launcher patches OpenRLHF for the rest of its process. vLLM cannot be installed here; its
    # stub (three names OpenRLHF imports) stands in, as in test_bad_inputs.
    import os

    from moslim_plugin.integration.vllm_stub import PATH as VLLM_STUB

    if compat.real_flash_attn_available():
        pytest.skip("real flash-attn installed: flash_attention_2 is valid here")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(VLLM_STUB), os.environ.get("PYTHONPATH", "")]))
    argv = ["train_ppo_ray", "--ds.attn_implementation", "flash_attention_2"]
    code = "import sys; from moslim_plugin.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("moslim-openrlhf train_ppo_ray: error: --ds.attn_implementation flash_attention_2 "), line
    assert "pass --ds.attn_implementation sdpa" in line


@pytest.mark.integration
def test_real_openrlhf_builds_a_reward_model_from_a_tiny_local_config(tmp_path):
    from helpers_models import tiny_llama_config
    from openrlhf.models import get_llm_for_sequence_regression
    from transformers import LlamaModel

    config = tiny_llama_config(vocab_size=128)
    LlamaModel(config).save_pretrained(tmp_path)
    model = get_llm_for_sequence_regression(
        str(tmp_path), "reward", param_dtype="bf16", attn_implementation="eager", init_value_head=True
    )
    ids = torch.randint(0, 128, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding, as OpenRLHF pads prompts
    reward = model(ids, mask)
    assert reward.shape == (2,) and torch.isfinite(reward.float()).all()


@pytest.mark.integration
def test_smollm2_is_materialised_with_im_end_as_eos_and_pad(smollm2_dir):
    cfg = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_end|>" and cfg["pad_token"] == "<|im_end|>"
    assert (smollm2_dir / "model.safetensors").is_file() and not list(smollm2_dir.glob("*.bin"))


@pytest.mark.integration
def test_minilm_wheel_is_a_safetensors_bert_folder(minilm_dir):
    assert json.loads((minilm_dir / "config.json").read_text())["model_type"] == "bert"
    assert (minilm_dir / "model.safetensors").is_file()


# The commands that load a model and run it on this machine's CPU (or GPU); the others only read or write files.
MODEL_COMMANDS = {  # command: the module that builds its parser
    "train-rm": "moslim_plugin.data.rm_config",
    "evaluate-rm": "moslim_plugin.data.evaluate_rm",
    "evaluate": "moslim_plugin.demo.evaluate",
    "screen": "moslim_plugin.demo.screen",
    "demo": "moslim_plugin.demo.pipeline",
    "serve-reward": "moslim_plugin.integration.server",
}


@pytest.mark.unit
def test_every_command_that_runs_a_model_has_one_threads_flag_with_one_meaning():
    import argparse
    import importlib

    from moslim_plugin import THREADS_HELP
    from moslim_plugin.cli import COMMANDS

    helps = set()
    for command, module in MODEL_COMMANDS.items():
        assert command in COMMANDS
        parser = importlib.import_module(module).build_parser()
        (action,) = [a for a in parser._actions if "--threads" in a.option_strings]
        assert action.help.startswith(THREADS_HELP) and (action.default, action.type("3")) == (None, 3), command
        helps.add(action.help)
        with pytest.raises(argparse.ArgumentTypeError):
            action.type("0")
    assert len(helps) == 1  # word for word the same flag


@pytest.mark.unit
def test_cli_lists_commands_and_names_an_unknown_one():
    ok = subprocess.run([sys.executable, "-m", "moslim_plugin", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "train_ppo_ray" in ok.stdout and "train-rm" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "moslim_plugin", "trian-rm"], capture_output=True, text=True)
    assert bad.returncode == 2 and "'trian-rm'" in bad.stderr and "train-rm" in bad.stderr


@pytest.mark.unit
def test_cli_before_setup_prints_a_one_line_hint_not_a_traceback(tmp_path):
    # A bare interpreter with only our source on the path: no torch, no OpenRLHF, as before `make setup`.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from moslim_plugin.cli import main; "
        "sys.exit(main(['train_ppo_ray']))"
    )
    import moslim_plugin

    src = str(__import__("pathlib").Path(moslim_plugin.__file__).parent.parent)
    proc = subprocess.run(["python3", "-I", "-c", code, src], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "make setup" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.gpu
def test_stock_openrlhf_reward_model_runs_in_bf16_on_cuda(tmp_path):
    from helpers_models import tiny_llama_config
    from openrlhf.models import get_llm_for_sequence_regression
    from transformers import LlamaModel

    config = tiny_llama_config(hidden_size=64, intermediate_size=128, vocab_size=256)
    LlamaModel(config).save_pretrained(tmp_path)
    model = get_llm_for_sequence_regression(
        str(tmp_path), "reward", param_dtype="bf16", attn_implementation="sdpa", init_value_head=True
    ).cuda()
    ids = torch.randint(0, 256, (4, 16), device="cuda")
    reward = model(ids, torch.ones_like(ids))
    assert reward.dtype == torch.bfloat16 and torch.isfinite(reward.float()).all()
