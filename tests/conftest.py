"""Shared fixtures. No tests/__init__.py: OpenRLHF's wheel installs a top-level package named `tests`."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports torch/deepspeed: no hub, no tokenizer thread pools fighting over 2 cores, and a fresh
# DeepSpeed extension folder (a killed JIT build leaves a lock that makes later runs hang).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="moslim-torch-ext-"))

from moslim_plugin.integration import compat  # noqa: E402

# Mocks what cannot exist on a CPU machine (flash-attn): the shim is product code, used the same way at run time.
compat.install()

# Shared test helpers (tests/helpers_*.py) are imported by name; --import-mode=importlib does not put this folder on
# sys.path. Appended, so nothing here can shadow an installed module.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir():
    from moslim_plugin.demo.real_models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def minilm_dir():
    from moslim_plugin.demo.real_models import minilm_path

    return minilm_path()


# ../shared beside the checkout (the project's real data), found from this file, never from the working directory.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: these tests read the real data in ../shared beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_dir):
    """A random-init 2-layer BERT with MiniLM's real tokenizer: the training loop, not the weights, is tested."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, smollm2_dir):
    """A random 3-layer causal LM saved with SmolLM2's tokenizer: the local driver's tests need its chat template."""
    import torch
    from helpers_models import tiny_policy_config
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_policy")
    LlamaForCausalLM(tiny_policy_config(tok)).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
