"""train-rm under DeepSpeed ZeRO-3: the reward model is built partitioned (transformers' HfDeepSpeedConfig ->
deepspeed.zero.Init), with the backbone's real weights (CPU, gloo), and on a GPU a ZeRO-3 run saves a checkpoint that
loads. Each runs in its own process, as `deepspeed`/`torchrun` would start a rank (world size 1)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

BUILD = """
from moslim_plugin.integration import compat

compat.install()  # the CPU flash-attn shim OpenRLHF's import needs without a GPU (no-op where flash-attn exists)
import json, sys
import deepspeed, torch
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
from openrlhf.utils.deepspeed.deepspeed_utils import get_train_ds_config
from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.rm_rows import load_tokenizer
from moslim_plugin.data.train_rm import TrainRMConfig, build_model

if not torch.cuda.is_available():
    # CPU: skip DeepSpeed's JIT-built shared-memory all-reduce (a C++ build of minutes here, and one rank has nothing
    # to communicate); gloo instead of NCCL.
    import deepspeed.comm.torch

    deepspeed.comm.torch.build_shm_op = lambda: None
deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
config = TrainRMConfig.from_argv(sys.argv[2:])
ds_config = get_train_ds_config(offload=False, adam_offload=False, stage=3, param_dtype="bf16", zpg=1)
tokenizer = load_tokenizer(config.model_name_or_path)  # MiniLM's: it gains a line-break token
ds_config = {**ds_config, "train_micro_batch_size_per_gpu": 4, "train_batch_size": 8}
model = build_model(config, load_spec("hh"), tokenizer, ds_config)
params = dict(model.named_parameters())
partitioned = [n for n, p in params.items() if getattr(p, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE]
with deepspeed.zero.GatheredParameters(list(params.values())):
    embeddings = model.backbone.embeddings.word_embeddings.weight.detach().cpu().clone()
torch.save(embeddings, sys.argv[1])
print("RESULT " + json.dumps({"params": sorted(params), "partitioned": sorted(partitioned), "vocab": len(tokenizer)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank(argv, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch-ext"),
    }
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return run.stdout


@pytest.fixture
def backbone_and_flags(tmp_path, minilm_dir):
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    backbone = tmp_path / "tiny-bert"
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    BertModel(config).save_pretrained(backbone)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(backbone)
    rows = [
        {"question": f"q{i}", "response": "sure" if i % 2 else "no", "labels": {"helpful": i % 2, "harmless": 1}}
        for i in range(64)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flags = ["--model.model_name_or_path", str(backbone), "--moslim.spec", "hh", "--data.dataset", str(data)]
    flags += ["--ds.zero_stage", "3", "--train.micro_batch_size", "4", "--train.batch_size", "8"]
    flags += ["--train.max_steps", "3", "--data.max_len", "32", "--moslim.eval_ratio", "0.25"]
    return backbone, flags


@pytest.mark.slow
@pytest.mark.integration
def test_train_rm_zero3_builds_every_parameter_partitioned_with_the_backbone_weights(tmp_path, backbone_and_flags):
    from safetensors.torch import load_file

    backbone, flags = backbone_and_flags
    embeddings = tmp_path / "embeddings.pt"
    out = run_rank([sys.executable, "-c", BUILD, str(embeddings), *flags], tmp_path)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    # Every parameter, heads included, was partitioned when built: no rank ever held the full model. The exception is
    # the word embeddings, resized for the line-break token: transformers' resize builds the new matrix whole under
    # ZeRO-3 (by design: its shape sizes the config) and deepspeed.initialize partitions it.
    whole = {"backbone.embeddings.word_embeddings.weight"}
    assert set(result["params"]) - set(result["partitioned"]) == whole
    assert any(n.startswith("heads.") for n in result["partitioned"])
    # And the backbone holds the pretrained weights (in ZeRO's dtype), not a random init, with one more row for the
    # line-break token MiniLM's tokenizer gains.
    built = torch.load(embeddings)
    saved = load_file(backbone / "model.safetensors")["embeddings.word_embeddings.weight"]
    assert built.dtype == torch.bfloat16
    assert built.shape[0] == result["vocab"] == saved.shape[0] + 1
    torch.testing.assert_close(built[:-1], saved.to(built.dtype), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.integration
def test_train_rm_with_zero3_on_gpu_saves_a_checkpoint_that_loads(tmp_path, backbone_and_flags):
    from moslim_plugin.core.rm import MultiHeadRewardModel

    _, flags = backbone_and_flags
    rm = tmp_path / "rm"
    run_rank([sys.executable, "-m", "moslim_plugin", "train-rm", *flags, "--ckpt.output_dir", str(rm)], tmp_path)
    model = MultiHeadRewardModel.from_pretrained(rm, device_map="cpu")
    assert model.stats is not None and model.spec.names == ("helpful", "harmless")
    ids = torch.tensor([[101, 2748, 102]])
    assert torch.isfinite(model(ids, torch.ones_like(ids))).all()
