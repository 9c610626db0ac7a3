"""Multi-head classification reward model: one HF backbone, one `nn.Linear` head per objective of the spec.

The backbone is whatever `AutoModel` loads (decoders such as Llama/Qwen2/SmolLM2, encoders such as BERT/MiniLM).
Each sequence is pooled to one vector (decoders: the last non-pad token, as OpenRLHF's RewardModel does, for left
and right padding alike; encoders: the mean over non-pad tokens or the first token) and every head turns it into
logits over that objective's levels. `forward` returns them padded to [B, K, Lmax] in fp32.

Checkpoint = HF folder: `config.json` is the backbone config plus a `moslim` entry (format version, spec, spec
fingerprint, pooling, mapping statistics or null) and `value_head_prefix: "score"`; the safetensors weights use the
backbone's `base_model_prefix` (as OpenRLHF's RewardModel names them), the heads as `heads.<i>.*`, and a ZERO
`score.weight` [1, hidden]. So stock OpenRLHF (`get_llm_for_sequence_regression(path, "reward")`) loads the folder
without error and returns the same reward (0) for every sample: a run where the MOSLIM patch is missing is obvious.
"""

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from transformers import AutoConfig, AutoModel

from moslim_plugin.core.spec import ObjectiveSpec

FORMAT_VERSION = 1
POOLINGS = ("last", "cls", "mean")
# Logit of a class a head does not have (a 2-level head padded to Lmax = 5): finite, so nothing turns into NaN, and
# low enough that softmax gives exactly 0 in fp32 (exp(-1e9) underflows) and log_softmax stays finite.
PAD_LOGIT = -1e9
VALUE_HEAD_PREFIX = "score"


def is_moslim_checkpoint(path) -> bool:
    """True if `path` is a folder whose config.json carries a `moslim` entry (written by `save_pretrained`)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    try:
        return isinstance(json.loads(config_file.read_text(encoding="utf-8")).get("moslim"), dict)
    except (json.JSONDecodeError, AttributeError):
        return False


def _is_causal(backbone: nn.Module) -> bool:
    # Read off the attention modules (transformers sets `is_causal` on them) rather than a list of model types.
    return any(getattr(m, "is_causal", False) is True for m in backbone.modules())


class MultiHeadRewardModel(nn.Module):
    def __init__(self, backbone: nn.Module, spec: ObjectiveSpec, pooling: str = "auto", stats=None):
        super().__init__()
        causal = _is_causal(backbone)
        if pooling == "auto":
            # Encoders: mean pooling, the pooling all-MiniLM-L6-v2 (sentence-transformers) was trained with.
            pooling = "last" if causal else "mean"
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected 'auto' or one of {list(POOLINGS)}, got {pooling!r}")
        if causal and pooling != "last":
            raise ValueError(
                f"pooling {pooling!r} on causal model {type(backbone).__name__}: only 'last' sees the whole sequence"
            )
        # A reward model scores whole sequences once: no KV cache (building one costs time and memory per call).
        backbone.config.use_cache = False
        self.backbone = backbone
        self.spec = spec
        self.pooling = pooling
        self.stats = stats  # MappingStats | None; a plain attribute (never a buffer: see the module docstring)
        hidden = backbone.config.hidden_size
        # Heads stay fp32 whatever the backbone dtype: they are tiny and the logits must be fp32.
        self.heads = nn.ModuleList(nn.Linear(hidden, n, dtype=torch.float32) for n in spec.levels)

    @property
    def max_levels(self) -> int:
        return max(self.spec.levels)

    @classmethod
    def from_backbone(cls, path, spec: ObjectiveSpec, pooling: str = "auto", dtype=torch.float32, **model_kwargs):
        """New model: pretrained backbone from `path` (any AutoModel folder), randomly initialised heads."""
        backbone = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=False, **model_kwargs)
        return cls(backbone, spec, pooling)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        if self.pooling == "mean":
            # where(), not a product: hidden states of pad positions may be NaN with some attention kernels.
            summed = torch.where(mask.unsqueeze(-1), hidden, 0).sum(dim=1)
            return summed / mask.sum(dim=1, keepdim=True).clamp(min=1).to(summed.dtype)
        if self.pooling == "last":
            # OpenRLHF's index: the last position whose mask is 1, for right and left padding alike.
            index = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1)
        else:  # cls: the first real token, also under left padding
            index = mask.long().argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), index]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        """Per-head logits [B, K, Lmax], fp32; classes beyond a head's levels hold PAD_LOGIT."""
        # Positions count real tokens only (as OpenRLHF does), so left-padded rows see the same positions.
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(attention_mask == 0, 1)
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        pooled = self.pool(out.last_hidden_state, attention_mask)
        logits = torch.full(
            (input_ids.size(0), len(self.heads), self.max_levels), PAD_LOGIT, dtype=torch.float32, device=pooled.device
        )
        for k, head in enumerate(self.heads):
            logits[:, k, : head.out_features] = head(pooled.to(head.weight.dtype)).float()
        return logits

    def save_pretrained(self, save_directory, tokenizer=None) -> None:
        from huggingface_hub import save_torch_state_dict

        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        prefix = self.backbone.base_model_prefix
        state = {f"{prefix}.{k}": v for k, v in self.backbone.state_dict().items()}
        state.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})
        # Stock OpenRLHF's value head: zero, so an unpatched run gets a constant reward instead of a plausible one.
        state[f"{VALUE_HEAD_PREFIX}.weight"] = torch.zeros(
            1, self.backbone.config.hidden_size, dtype=self.backbone.dtype, device=self.backbone.device
        )
        save_torch_state_dict(state, save_directory, safe_serialization=True)
        config = copy.deepcopy(self.backbone.config)
        config.architectures = [type(self.backbone).__name__]
        config.value_head_prefix = VALUE_HEAD_PREFIX
        config.moslim = {
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "spec_fingerprint": self.spec.fingerprint,
            "pooling": self.pooling,
            "stats": None if self.stats is None else self.stats.to_dict(),
        }
        config.save_pretrained(save_directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, path, dtype=torch.float32, device="cpu", spec: ObjectiveSpec | None = None, **model_kwargs
    ) -> "MultiHeadRewardModel":
        """Load a folder written by `save_pretrained`. `spec`: the spec the caller expects (mismatch -> ValueError)."""
        path = Path(path)
        if not is_moslim_checkpoint(path):
            raise ValueError(
                f"{path} is not a MOSLIM reward-model checkpoint (no config.json with a 'moslim' entry); "
                "to start from a plain backbone use MultiHeadRewardModel.from_backbone(path, spec)"
            )
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        meta = config.moslim
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: MOSLIM checkpoint format_version {meta.get('format_version')!r}, this plugin reads "
                f"{FORMAT_VERSION}"
            )
        saved_spec = ObjectiveSpec.from_dict(meta["spec"], source=f"{path}/config.json")
        if saved_spec.fingerprint != meta.get("spec_fingerprint"):
            raise ValueError(
                f"{path}/config.json: moslim.spec has fingerprint {saved_spec.fingerprint} but "
                f"moslim.spec_fingerprint says {meta.get('spec_fingerprint')!r}: the spec was edited after saving"
            )
        if spec is not None:
            saved_spec.check_same(spec, f"loading reward model {path}")
        backbone, info = AutoModel.from_pretrained(
            path, config=config, dtype=dtype, trust_remote_code=False, output_loading_info=True, **model_kwargs
        )
        if info["missing_keys"]:
            raise ValueError(f"{path}: backbone weights missing from the checkpoint: {sorted(info['missing_keys'])}")
        # Statistics are restored here, after from_pretrained, never through buffers (transformers 5.x leaves
        # non-persistent buffers uninitialised on load).
        stats = None
        if meta.get("stats") is not None:
            from moslim_plugin.core.mappings import MappingStats

            stats = MappingStats.from_dict(meta["stats"])
        model = cls(backbone, saved_spec, meta["pooling"], stats)
        model.heads.load_state_dict(_read_heads(path, len(saved_spec.levels)), strict=True)
        return model.to(device).eval()


def _read_heads(path: Path, num_heads: int) -> dict:
    """The `heads.*` tensors (fp32) from the checkpoint's safetensors file(s); missing ones are an error."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    elif (path / "model.safetensors").is_file():
        with safe_open(path / "model.safetensors", "pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
        raise ValueError(f"{path}: no model.safetensors (MOSLIM checkpoints are safetensors only)")
    wanted = [f"heads.{k}.{p}" for k in range(num_heads) for p in ("weight", "bias")]
    missing = [k for k in wanted if k not in weight_map]
    if missing:
        raise ValueError(f"{path}: head weights missing from the checkpoint: {missing} (expected {num_heads} heads)")
    heads = {}
    for name in wanted:
        with safe_open(path / weight_map[name], "pt") as f:
            heads[name.removeprefix("heads.")] = f.get_tensor(name).float()
    return heads
