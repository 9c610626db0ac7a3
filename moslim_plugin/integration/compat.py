"""Run `openrlhf.models` on machines without flash-attn.

`openrlhf/models/ring_attn_utils.py` imports `flash_attn.bert_padding` and `flash_attn.utils.distributed` at module
level, so `import openrlhf.models` fails without the CUDA-only flash-attn wheel even though those helpers are only
used for sample packing and ring attention. `install()` registers a minimal `flash_attn` module with pure-torch
equivalents of the padding helpers. It deliberately has no `flash_attn.ops`: OpenRLHF's `log_probs_from_logits`
falls back to torch only on ImportError of `flash_attn.ops.triton.cross_entropy`.

Does nothing when the real flash-attn is importable. Remove when OpenRLHF imports flash-attn lazily.
"""

import importlib.machinery
import importlib.util
import sys
import types

import torch
from einops import rearrange

SHIM_MARKER = "__moslim_flash_attn_shim__"


def real_flash_attn_available() -> bool:
    mod = sys.modules.get("flash_attn")
    if mod is not None:
        return not getattr(mod, SHIM_MARKER, False)
    return importlib.util.find_spec("flash_attn") is not None


def index_first_axis(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return tensor[indices]


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask=None):
    """Same return tuple as flash_attn 2.8: (unpadded, indices, cu_seqlens, max_seqlen, seqused)."""
    all_masks = attention_mask if unused_mask is None else attention_mask + unused_mask
    seqlens = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item())
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, max_seqlen, used_seqlens


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    out = torch.zeros(batch * seqlen, *hidden_states.shape[1:], device=hidden_states.device, dtype=hidden_states.dtype)
    out[indices] = hidden_states
    return out.reshape(batch, seqlen, *hidden_states.shape[1:])


def _all_gather_unavailable(*args, **kwargs):
    raise RuntimeError(
        "ring attention needs the real flash-attn (pip install 'moslim-plugin[gpu]' on a CUDA machine); "
        "set --ds.ring_attn_size 1 on machines without it"
    )


def install() -> bool:
    """Register the shim if flash-attn is missing. Returns True when the shim is (now) in place."""
    if real_flash_attn_available():
        return False
    if "flash_attn" in sys.modules:
        return True
    modules = {}
    for name in ("flash_attn", "flash_attn.bert_padding", "flash_attn.utils", "flash_attn.utils.distributed"):
        mod = types.ModuleType(name)
        # A spec keeps importlib.util.find_spec (used by transformers' availability checks) from raising.
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        setattr(mod, SHIM_MARKER, True)
        modules[name] = mod
    bp = modules["flash_attn.bert_padding"]
    bp.index_first_axis, bp.pad_input, bp.unpad_input, bp.rearrange = (
        index_first_axis,
        pad_input,
        unpad_input,
        rearrange,
    )
    modules["flash_attn.utils.distributed"].all_gather = _all_gather_unavailable
    modules["flash_attn"].bert_padding = bp
    modules["flash_attn"].utils = modules["flash_attn.utils"]
    modules["flash_attn.utils"].distributed = modules["flash_attn.utils.distributed"]
    sys.modules.update(modules)
    return True


def check_args(args) -> None:
    """Fail before any model is built when the run asks for what only real flash-attn provides: a UserError, which
    `moslim-openrlhf train_ppo_ray` prints as one line (exit 2)."""
    from moslim_plugin import UserError

    if real_flash_attn_available():
        return
    ds = getattr(args, "ds", None)
    if ds is None:
        return
    if getattr(ds, "packing_samples", False):
        raise UserError(
            "--ds.packing_samples needs the real flash-attn (varlen attention keeps packed samples apart); "
            "it is not installed here: drop the flag or install 'moslim-plugin[gpu]'"
        )
    if getattr(ds, "ring_attn_size", 1) != 1:
        raise UserError(f"--ds.ring_attn_size {ds.ring_attn_size} needs the real flash-attn; it is not installed here")
    if getattr(ds, "attn_implementation", None) == "flash_attention_2":
        raise UserError(
            "--ds.attn_implementation flash_attention_2 (OpenRLHF's default) needs flash-attn, which is not installed "
            "here: pass --ds.attn_implementation sdpa (or eager)"
        )
