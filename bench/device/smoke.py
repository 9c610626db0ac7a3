# ruff: noqa: E402, E501  (device-call script: prints versions before importing; long literal lists)
"""Versions of what the GPU run uses (and whether the bundle or the image provides it), then every import the GPU
steps need, each tried on its own. Run by .gpu/run.sh with the bundle on PYTHONPATH."""

import importlib
import importlib.metadata as md
import importlib.util
import os
import sys
import time
import traceback

print(sys.version.replace("\n", " "), sys.executable)
for name in [
    "torch",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "accelerate",
    "peft",
    "numpy",
    "typing-extensions",
    "anyio",
    "h11",
    "click",
    "aiohttp",
    "protobuf",
    "msgpack",
    "filelock",
    "packaging",
    "requests",
    "pyyaml",
    "psutil",
    "py-cpuinfo",
    "ninja",
    "sympy",
    "attrs",
    "annotated-doc",
    "uvloop",
    "einops",
    "triton",
    "pytest",
    "hypothesis",
    "openrlhf",
    "deepspeed",
    "ray",
    "pydantic",
    "pydantic-core",
    "fastapi",
    "starlette",
    "uvicorn",
    "opentelemetry-api",
    "jsonschema",
    "torchdata",
    "pylatexenc",
    "hjson",
]:
    try:
        d = md.distribution(name)
        where = "bundle" if "/.gpu/site" in str(d.locate_file("")) else str(d.locate_file(""))
        print(f"  {name:18} {d.version:14} {where}")
    except md.PackageNotFoundError:
        print(f"  {name:18} MISSING")
import torch

print(
    "cuda",
    torch.cuda.is_available(),
    torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
)
from moslim_plugin.integration import compat

print("flash-attn shim installed:", compat.install())
if importlib.util.find_spec("vllm") is None:
    sys.path.insert(0, os.path.join(os.getcwd(), "moslim_plugin", "integration", "vllm_stub"))
    print("vllm: moslim_plugin/integration/vllm_stub")
failed = []
for mod in [
    "openrlhf",
    "deepspeed",
    "ray",
    "pydantic",
    "fastapi",
    "uvicorn",
    "openrlhf.models",
    "openrlhf.utils.agent",
    "openrlhf.cli.serve_rm",
    "openrlhf.trainer.ray.launcher",
    "moslim_plugin.integration.ray_reward",
    "moslim_plugin.integration.server",
    "moslim_plugin.core.scorer",
    "bench.gpu_check_reward_actor",
    "bench.bench_heads",
    "bench.bench_server",
]:
    t = time.time()
    try:
        importlib.import_module(mod)
        print(f"  import {mod}: ok ({time.time() - t:.1f}s)")
    except BaseException as e:
        failed.append(mod)
        print(f"  import {mod}: FAILED {type(e).__name__}: {e}")
        traceback.print_exc(limit=-4)
try:
    from moslim_plugin.demo.real_models import minilm_path, smollm2_path

    print("minilm", minilm_path(), "smollm2 (tokenizer only)", smollm2_path())
except BaseException as e:
    failed.append("real_models")
    print("real_models FAILED", type(e).__name__, e)
print("smoke:", "all imports ok" if not failed else f"FAILED {failed}")
sys.exit(1 if failed else 0)
