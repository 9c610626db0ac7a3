"""Multi-head classification reward model: one HF backbone, one `nn.Linear` head per learned objective of the spec.

Rule objectives (`rule:` in the spec, `core/rules.py`) have no head: the Scorer computes their levels exactly. The
checkpoint still carries the whole spec, rules included, so its fingerprint covers them; a spec of rules only has no
reward model at all (its "checkpoint" is the spec file itself, see `is_moslim_checkpoint`).

The backbone is whatever `AutoModel` loads (decoders such as Llama/Qwen2/SmolLM2, encoders such as BERT/MiniLM).
Each sequence is pooled to one vector (decoders: the last non-pad token, as OpenRLHF's RewardModel does, for left
and right padding alike; encoders: the mean over non-pad tokens or the first token) and every head turns it into
logits over that objective's levels. `forward` returns them padded to [B, K, Lmax] in fp32.

The model is a transformers `PreTrainedModel` with its own config class (`model_type: moslim_multihead`),
registered with `AutoConfig`/`AutoModel` when this module is imported (in-process: no remote code, no `auto_map`).
So `from_pretrained(dtype=..., device_map=...)`, `save_pretrained`, `push_to_hub`, gradient checkpointing and
DeepSpeed ZeRO-3 partitioned init are transformers' own. Checkpoint (format 2) = HF folder: `config.json` holds
`backbone_config` (the backbone's config, with its model_type) and a `moslim` entry (format version, spec, spec
fingerprint, pooling, whether responses are read with numbered words, mapping statistics or null); the safetensors
weights are named as in an HF `XForSequenceClassification` checkpoint: the backbone's under its
`base_model_prefix` (`model.*` for Llama, `bert.*` for BERT), the heads as `heads.<i>.*`. Format 1 folders
(config.json = the backbone's own config plus `moslim`, the same weight names plus a zero `score.weight`) still load.
Stock OpenRLHF refuses both with "unrecognized model type": a run where the MOSLIM patch is missing fails at load
time.
"""

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from moslim_plugin import UserError
from moslim_plugin.core.spec import ObjectiveSpec, SpecError, is_spec_file, load_spec

FORMAT_VERSION = 2
# config.json's `moslim.number_words` of an RM that reads numbered words with the response's digits spelled out
# (`scorer.encode_truncated`). `true` was written by the scheme before it, whose indices the response's own numerals
# could imitate: refused, since reading those weights either way would score otherwise than they were trained.
NUMBERED_WORDS = "spelled_digits"
POOLINGS = ("last", "cls", "mean")
# Logit of a class a head does not have (a 2-level head padded to Lmax = 5): finite, so nothing turns into NaN, and
# low enough that softmax gives exactly 0 in fp32 (exp(-1e9) underflows) and log_softmax stays finite.
PAD_LOGIT = -1e9


def is_moslim_checkpoint(path) -> bool:
    """True if `path` is a folder whose config.json carries a `moslim` entry (written by `save_pretrained`), or a spec
    file (YAML/JSON): the weightless reward of a spec whose objectives are all rules (no stock reward model is one
    file, so such a path is taken for MOSLIM's, and a spec with learned objectives is refused when it is loaded)."""
    if is_spec_file(path):
        return True
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    try:
        return isinstance(json.loads(config_file.read_text(encoding="utf-8")).get("moslim"), dict)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def check_plain_backbone(path) -> None:
    """A MOSLIM checkpoint given where a plain backbone folder is wanted is refused (transformers would fail deep
    inside, on a missing backbone config field); train-rm asks before it reads any row."""
    if is_moslim_checkpoint(path):
        raise UserError(
            f"backbone {str(path)!r} is a MOSLIM reward-model checkpoint: start from a plain backbone folder (its "
            "config.json has no 'moslim' entry), or load the reward model with from_pretrained"
        )


def max_positions(path) -> int | None:
    """The most tokens the backbone in `path` can read, from its config.json without loading weights: a MOSLIM
    checkpoint keeps the backbone's config under `backbone_config` (format 2), a format 1 checkpoint or a plain
    backbone folder at the top. None when the config names no limit."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # the loader that follows names what is wrong with the folder
    backbone = config.get("backbone_config") if isinstance(config, dict) else None
    backbone = backbone if isinstance(backbone, dict) else config if isinstance(config, dict) else {}
    # GPT-2-style configs save the same limit as n_positions (transformers' attribute_map).
    limits = [backbone.get(key) for key in ("max_position_embeddings", "n_positions")]
    return next((n for n in limits if isinstance(n, int) and not isinstance(n, bool) and n > 0), None)


def saved_spec(path) -> ObjectiveSpec:
    """The spec a checkpoint folder was trained for, read from its config.json without loading any weights; for a
    spec file (a reward of rules only), that spec, refused when an objective of it is learned."""
    if is_spec_file(path):
        spec = load_spec(path)
        learned = [spec.names[i] for i in spec.learned]
        if learned:
            raise SpecError(
                f"{path}: a spec file is a reward only when every objective is a rule, but {learned} are learned: "
                "pass the reward-model checkpoint trained for it (train-rm)"
            )
        return spec
    if not is_moslim_checkpoint(path):
        raise UserError(f"{path}: not a reward-model checkpoint (no config.json with a 'moslim' entry)")
    meta = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))["moslim"]
    return ObjectiveSpec.from_dict(meta["spec"], source=f"{path}/config.json")


def ensure_pad_token(tokenizer):
    """Give a tokenizer without a pad token its eos token as pad (pad positions are masked and never pooled, so the
    id's value never matters; OpenRLHF does the same). Returns the tokenizer."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class MoslimRMConfig(PreTrainedConfig):
    """`backbone_config`: the backbone's config (a dict with its `model_type` on disk). `moslim`: format_version,
    spec (dict), spec_fingerprint, pooling (resolved, never 'auto'), number_words (false or `NUMBERED_WORDS`, absent =
    false: see `scorer.encode_truncated`), stats (MappingStats.to_dict() or None), max_len (the tokens per row train-rm
    trained at; absent in a checkpoint built otherwise)."""

    model_type = "moslim_multihead"
    sub_configs = {"backbone_config": AutoConfig}
    backbone_config: dict | PreTrainedConfig | None = None
    moslim: dict | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict):
            backbone_type = self.backbone_config.get("model_type")
            if backbone_type not in CONFIG_MAPPING:
                raise UserError(f"backbone_config.model_type: {backbone_type!r} is not a model type of transformers")
            self.backbone_config = CONFIG_MAPPING[backbone_type](**self.backbone_config)
        super().__post_init__(**kwargs)


def _is_causal(backbone: nn.Module) -> bool:
    # Read off the attention modules (transformers sets `is_causal` on them) rather than a list of model types.
    return any(getattr(m, "is_causal", False) is True for m in backbone.modules())


class MultiHeadRewardModel(PreTrainedModel):
    config_class = MoslimRMConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True  # transformers' enable() reaches the backbone's layers
    # The backbone checks the attention implementation it is given; this wrapper adds no attention of its own.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True
    # Heads stay fp32 whatever the backbone dtype: they are tiny and the logits must be fp32.
    _keep_in_fp32_modules_strict = ["heads"]
    _keys_to_ignore_on_load_unexpected = [r"^score\.weight$"]  # format 1's zero value head for stock OpenRLHF

    def __init__(
        self, config, spec: ObjectiveSpec | None = None, pooling: str = "auto", stats=None, number_words: bool = False
    ):
        """`MultiHeadRewardModel(config)` as transformers builds it, or `MultiHeadRewardModel(backbone, spec,
        pooling, stats, number_words)`: heads (randomly initialised) on an existing backbone module."""
        backbone = None
        if isinstance(config, nn.Module):
            backbone = config
            if spec is None:
                raise TypeError("MultiHeadRewardModel(backbone, spec): the spec is required with a backbone module")
            meta = {"format_version": FORMAT_VERSION, "spec": spec.to_dict(), "spec_fingerprint": spec.fingerprint}
            config = MoslimRMConfig(
                backbone_config=backbone.config,
                moslim={**meta, "pooling": pooling, "number_words": number_words and NUMBERED_WORDS, "stats": None},
                # Set on every sub-config too: without these the backbone's own choice would be reset to None.
                attn_implementation=backbone.config._attn_implementation,
                experts_implementation=backbone.config._experts_implementation,
            )
        super().__init__(config)
        if backbone is None:
            backbone = AutoModel.from_config(config.backbone_config)
        self.config.backbone_config = backbone.config  # one config object: what is saved is what the backbone runs
        # A reward model scores whole sequences once: no KV cache (building one costs time and memory per call).
        backbone.config.use_cache = False
        self.backbone = backbone
        self.spec = spec if spec is not None else ObjectiveSpec.from_dict(config.moslim["spec"])
        self.pooling = self._resolve_pooling(config.moslim["pooling"])
        # Checkpoints written before number_words existed were trained on plain responses: absent means False.
        words = config.moslim.get("number_words", False)
        if words is True:
            raise UserError(
                "moslim.number_words true: this reward model reads numbered words as an earlier version wrote them, "
                "where a numeral in the response could pass for a word index; retrain it (train-rm "
                "--moslim.number_words)"
            )
        if words not in (False, NUMBERED_WORDS):
            raise UserError(f"moslim.number_words: expected false or {NUMBERED_WORDS!r}, got {words!r}")
        self.number_words = words == NUMBERED_WORDS
        self.config.moslim = {**config.moslim, "pooling": self.pooling, "number_words": words}
        # MappingStats | None: a plain attribute, never a buffer (transformers 5.x leaves non-persistent buffers
        # uninitialised on load); from_pretrained restores it after loading, save_pretrained writes it to config.
        self.stats = stats
        # One head per learned objective, in spec order (a spec of rules only has none: refused, naming the spec).
        self.head_levels = self.spec.learned_spec().levels
        hidden = backbone.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, n, dtype=torch.float32) for n in self.head_levels)
        self.post_init()

    def _resolve_pooling(self, pooling: str) -> str:
        causal = _is_causal(self.backbone)
        if pooling == "auto":
            # Encoders: mean pooling, the pooling all-MiniLM-L6-v2 (sentence-transformers) was trained with.
            pooling = "last" if causal else "mean"
        if pooling not in POOLINGS:
            raise UserError(f"pooling: expected 'auto' or one of {list(POOLINGS)}, got {pooling!r}")
        if causal and pooling != "last":
            raise UserError(
                f"pooling {pooling!r} on causal model {type(self.backbone).__name__}: only 'last' sees the whole "
                "sequence"
            )
        return pooling

    def _init_weights(self, module):
        # Heads keep torch's nn.Linear init (as before this was a PreTrainedModel); the backbone, a PreTrainedModel
        # itself, gets its own `_init_weights` from transformers, and loaded weights are never re-initialised.
        pass

    @property
    def max_levels(self) -> int:
        return max(self.head_levels)

    @classmethod
    def from_backbone(
        cls, path, spec: ObjectiveSpec, pooling: str = "auto", dtype=torch.float32, number_words=False, **model_kwargs
    ):
        """New model: pretrained backbone from `path` (any AutoModel folder), randomly initialised heads. Under an
        active ZeRO-3 `HfDeepSpeedConfig` the backbone loads partitioned and the heads are created partitioned."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        check_plain_backbone(path)
        try:
            backbone = AutoModel.from_pretrained(
                path, dtype=dtype, trust_remote_code=False, use_safetensors=True, **model_kwargs
            )
        except (OSError, ValueError, SafetensorError) as e:  # transformers' "no such model / no weights / bad config"
            raise UserError(f"backbone {str(path)!r}: cannot be loaded ({type(e).__name__}: {e})") from None
        if not is_deepspeed_zero3_enabled():
            return cls(backbone, spec, pooling, number_words=number_words)
        import deepspeed
        from transformers.integrations.deepspeed import deepspeed_config

        with deepspeed.zero.Init(config_dict_or_path=deepspeed_config()):
            return cls(backbone, spec, pooling, number_words=number_words)

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
        """Per-head logits [B, K, Lmax] (K heads: the learned objectives), fp32; classes beyond a head's levels hold
        PAD_LOGIT."""
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

    def save_pretrained(self, save_directory, tokenizer=None, **kwargs) -> None:
        """transformers' save (safetensors only) with the current statistics in config.json, and the tokenizer."""
        if kwargs.get("safe_serialization") is False:
            raise UserError("MOSLIM checkpoints are safetensors only: safe_serialization=False is refused")
        self.config.moslim = {**self.config.moslim, "stats": None if self.stats is None else self.stats.to_dict()}
        # Weight names as the backbone's own base_model_prefix (see the module docstring), the reverse of the
        # renaming from_pretrained applies; no other renaming on save (save_original_format=False).
        prefix = _backbone_prefix(self.config.backbone_config)
        state = kwargs.pop("state_dict", None) or self.state_dict()
        state = {re.sub(r"^backbone\.", f"{prefix}.", k): v for k, v in state.items()}
        super().save_pretrained(save_directory, state_dict=state, save_original_format=False, **kwargs)
        if tokenizer is not None and kwargs.get("is_main_process", True):
            tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, spec=None, device=None, dtype=torch.float32, **kwargs
    ) -> "MultiHeadRewardModel":
        """Load a MOSLIM checkpoint (format 2, or format 1 written before this was a PreTrainedModel), safetensors
        only. `spec`: the spec the caller expects (mismatch -> error). `device`: moved there after loading (use
        `device_map` for transformers' placement instead); any other keyword goes to transformers."""
        path = Path(pretrained_model_name_or_path)
        if path.is_file():
            raise UserError(f"{path} is a file, not a reward-model checkpoint folder (a spec has no weights to load)")
        if path.is_dir() and not is_moslim_checkpoint(path):
            raise UserError(
                f"{path} is not a MOSLIM reward-model checkpoint (no config.json with a 'moslim' entry); "
                "to start from a plain backbone use MultiHeadRewardModel.from_backbone(path, spec)"
            )
        weights = ("model.safetensors", "model.safetensors.index.json")
        if path.is_dir() and not any((path / f).is_file() for f in weights):
            found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
            raise UserError(f"{path}: no model.safetensors (MOSLIM checkpoints are safetensors only; found {found})")
        if kwargs.pop("use_safetensors", True) is not True or kwargs.pop("trust_remote_code", False):
            raise UserError("MOSLIM checkpoints load with use_safetensors=True and trust_remote_code=False only")
        want_info = kwargs.pop("output_loading_info", False)
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path, trust_remote_code=False)
        if not isinstance(config, MoslimRMConfig):
            config = _upgrade_format_1(config, path)
        saved_spec = _check_meta(config.moslim, path)
        if spec is not None:
            saved_spec.check_same(spec, f"loading reward model {path}")
        try:
            model, info = super().from_pretrained(
                path,
                *model_args,
                config=config,
                dtype=dtype,
                key_mapping={rf"^{re.escape(_backbone_prefix(config.backbone_config))}\.": "backbone."},
                use_safetensors=True,
                trust_remote_code=False,
                output_loading_info=True,
                **kwargs,
            )
        except SafetensorError as e:  # a truncated or overwritten weights file: the user's to replace
            raise UserError(f"{path}: the weights cannot be read ({e}); is the checkpoint complete?") from None
        missing = sorted(info["missing_keys"])
        if missing:
            what = "head" if any(k.startswith("heads.") for k in missing) else "backbone"
            raise UserError(f"{path}: {what} weights missing from the checkpoint: {missing}")
        model.spec = saved_spec  # the same spec, whose source names this checkpoint in spec-mismatch errors
        # Statistics are restored here, after from_pretrained, never through buffers (see __init__).
        stats = config.moslim.get("stats")
        if stats is not None:
            from moslim_plugin.core.mappings import MappingStats

            model.stats = MappingStats.from_dict(stats)
            if model.stats.levels != model.head_levels:
                raise UserError(
                    f"{path}/config.json: moslim.stats are for heads of levels {list(model.stats.levels)}, but the "
                    f"model's heads have {list(model.head_levels)}"
                )
        if device is not None:
            model = model.to(device)
        model.eval()
        return (model, info) if want_info else model


def _check_meta(meta: dict, path) -> ObjectiveSpec:
    """The saved spec, after checking the format version and that the spec still matches its fingerprint."""
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: MOSLIM checkpoint format_version {meta.get('format_version')!r}, this plugin reads 1 (upgraded "
            f"on load) and {FORMAT_VERSION}"
        )
    saved_spec = ObjectiveSpec.from_dict(meta["spec"], source=f"{path}/config.json")
    if saved_spec.fingerprint != meta.get("spec_fingerprint"):
        raise UserError(
            f"{path}/config.json: moslim.spec has fingerprint {saved_spec.fingerprint} but "
            f"moslim.spec_fingerprint says {meta.get('spec_fingerprint')!r}: the spec was edited after saving"
        )
    return saved_spec


def _backbone_prefix(backbone_config: PreTrainedConfig) -> str:
    """The prefix of the backbone's weights in a checkpoint: its class's `base_model_prefix` (as OpenRLHF's
    RewardModel and HF's XForSequenceClassification name them)."""
    return AutoModel._model_mapping[type(backbone_config)].base_model_prefix or "backbone"


def _upgrade_format_1(backbone_config: PreTrainedConfig, path) -> MoslimRMConfig:
    """Format 1: config.json is the backbone's own config plus `moslim` and `value_head_prefix`; its weights are
    named as format 2's (plus `score.weight`, ignored on load). Returns the format 2 config."""
    meta = getattr(backbone_config, "moslim", None)
    if not isinstance(meta, dict) or meta.get("format_version") != 1:
        raise UserError(f"{path}: config.json is neither a {MoslimRMConfig.model_type} config nor a format 1 one")
    fields = backbone_config.to_dict()
    for key in ("moslim", "value_head_prefix", "architectures"):
        fields.pop(key, None)
    return MoslimRMConfig(backbone_config=fields, moslim={**meta, "format_version": FORMAT_VERSION})


AutoConfig.register(MoslimRMConfig.model_type, MoslimRMConfig, exist_ok=True)
AutoModel.register(MoslimRMConfig, MultiHeadRewardModel, exist_ok=True)
