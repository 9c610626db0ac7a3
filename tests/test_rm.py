"""MultiHeadRewardModel: pooling, padding invariance, checkpoint round trip, stock OpenRLHF load, bad inputs."""

import json
import subprocess
import sys

import pytest
import torch
from helpers_models import tiny_llama_config
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaModel

from moslim_plugin import UserError
from moslim_plugin.core.rm import NUMBERED_WORDS, PAD_LOGIT, MoslimRMConfig, MultiHeadRewardModel, is_moslim_checkpoint
from moslim_plugin.core.spec import load_spec

SPEC = load_spec("helpsteer")  # levels (5, 5, 2): the 2-level head is padded to 5 classes


def tiny_llama(dtype=torch.float32):
    torch.manual_seed(0)
    config = tiny_llama_config(max_position_embeddings=128, attn_implementation="eager")
    return LlamaModel(config).to(dtype)


def tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        attn_implementation="eager",
    )
    return BertModel(config)


def random_stats():
    from moslim_plugin.core.mappings import MappingStats

    probs = torch.rand(7, 3, 5) * (torch.arange(5) < torch.tensor(SPEC.levels)[:, None])
    return MappingStats.from_probs(probs / probs.sum(-1, keepdim=True), SPEC.levels)


def pad_batch(seqs, side):
    """Pad token-id lists with id 0 on `side`; returns input_ids, attention_mask."""
    width = max(len(s) for s in seqs)
    ids, mask = torch.zeros(len(seqs), width, dtype=torch.long), torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, cols], mask[i, cols] = torch.tensor(s), 1
    return ids, mask


def assert_padding_invariant(model, seqs, atol):
    with torch.no_grad():
        right = model(*pad_batch(seqs, "right"))
        left = model(*pad_batch(seqs, "left"))
        single = torch.cat([model(*pad_batch([s], "right")) for s in seqs])
    torch.testing.assert_close(left, right, atol=atol, rtol=0)
    torch.testing.assert_close(single, right, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, smollm2_dir):
    model = MultiHeadRewardModel(tiny_llama(), SPEC).eval()
    path = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(path, tokenizer=AutoTokenizer.from_pretrained(smollm2_dir))
    return model, path


@pytest.mark.integration
def test_smollm2_decoder_pools_last_token_and_ignores_padding_side_and_batching(smollm2_dir):
    model = MultiHeadRewardModel.from_backbone(smollm2_dir, SPEC).eval()
    assert model.pooling == "last"
    seqs = [[1, 504, 3303, 314, 260, 2], [1, 4387, 1812, 30, 443, 1161, 5012, 2]]
    assert_padding_invariant(model, seqs, atol=1e-4)
    with torch.no_grad():
        ids, mask = pad_batch(seqs, "right")
        logits = model(ids, mask)
        # Last-token pooling: changing an earlier token changes the logits (the last token attends to it).
        ids2 = ids.clone()
        ids2[0, 1] = 777
        assert not torch.allclose(model(ids2, mask)[0], logits[0], atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("pooling", ["auto", "cls"])
def test_minilm_encoder_pools_mean_or_cls_and_ignores_padding_side_and_batching(minilm_dir, pooling):
    model = MultiHeadRewardModel.from_backbone(minilm_dir, SPEC, pooling=pooling).eval()
    assert model.pooling == ("mean" if pooling == "auto" else "cls")
    seqs = [[101, 7592, 2088, 102], [101, 2023, 2003, 1037, 2936, 6251, 102], [101, 102]]
    assert_padding_invariant(model, seqs, atol=1e-4)


@pytest.mark.unit
def test_logits_are_fp32_with_zero_probability_on_padded_classes_for_bf16_backbone():
    model = MultiHeadRewardModel(tiny_llama(torch.bfloat16), SPEC).eval()
    ids, mask = pad_batch([[5, 6, 7], [8, 9]], "right")
    with torch.no_grad():
        logits = model(ids, mask)
    assert logits.dtype == torch.float32 and logits.shape == (2, 3, 5)
    assert torch.isfinite(logits).all()
    assert (logits[:, 2, 2:] == PAD_LOGIT).all()
    probs = logits.softmax(-1)
    assert (probs[:, 2, 2:] == 0).all() and not probs.isnan().any()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    assert torch.isfinite(logits.log_softmax(-1)).all()


@pytest.mark.integration
def test_round_trip_gives_identical_logits_spec_pooling_and_tokenizer(tiny_checkpoint):
    model, path = tiny_checkpoint
    assert is_moslim_checkpoint(path)
    loaded = MultiHeadRewardModel.from_pretrained(path, spec=SPEC, attn_implementation="eager")
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], "left")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))
    assert loaded.spec.fingerprint == SPEC.fingerprint and loaded.pooling == "last" and loaded.stats is None
    assert (path / "tokenizer_config.json").is_file()
    assert not list(path.glob("*.bin")), "safetensors only"
    config = json.loads((path / "config.json").read_text())
    assert config["moslim"]["spec_fingerprint"] == SPEC.fingerprint and config["model_type"] == "moslim_multihead"


@pytest.mark.integration
def test_mapping_statistics_survive_the_round_trip(tmp_path):
    from moslim_plugin.core.mappings import MappingStats

    model = MultiHeadRewardModel(tiny_llama(), SPEC)
    model.stats = random_stats()
    assert isinstance(model.stats, MappingStats)
    model.save_pretrained(tmp_path)
    loaded = MultiHeadRewardModel.from_pretrained(tmp_path)
    for key in ("mean", "std", "count"):
        torch.testing.assert_close(getattr(loaded.stats, key), getattr(model.stats, key), rtol=0, atol=1e-12)
    assert json.loads((tmp_path / "config.json").read_text())["moslim"]["stats"]["levels"] == [5, 5, 2]


@pytest.mark.integration
def test_stock_openrlhf_without_the_plugin_refuses_the_checkpoint_instead_of_scoring_it(tiny_checkpoint):
    # A fresh interpreter that never imports moslim_plugin.core: what a Ray worker sees when the MOSLIM patch is
    # missing (only the CPU flash-attn shim, which OpenRLHF's import needs here).
    _, path = tiny_checkpoint
    code = (
        "from moslim_plugin.integration import compat; compat.install()\n"
        "import sys; assert 'moslim_plugin.core.rm' not in sys.modules\n"
        "from openrlhf.models import get_llm_for_sequence_regression\n"
        f"get_llm_for_sequence_regression({str(path)!r}, 'reward', attn_implementation='eager')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "moslim_multihead" in run.stderr, run.stderr[-2000:]


@pytest.mark.integration
def test_loading_with_a_different_expected_spec_names_both_fingerprints(tiny_checkpoint):
    _, path = tiny_checkpoint
    other = load_spec("hh")
    with pytest.raises(ValueError, match=f"{SPEC.fingerprint}.*{other.fingerprint}"):
        MultiHeadRewardModel.from_pretrained(path, spec=other)


@pytest.mark.integration
def test_missing_head_weights_are_an_error_not_random_init(tiny_checkpoint, tmp_path):
    _, path = tiny_checkpoint
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    state = load_file(tmp_path / "model.safetensors")
    del state["heads.2.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"head weights missing.*heads\.2\.weight"):
        MultiHeadRewardModel.from_pretrained(tmp_path)


@pytest.mark.integration
def test_a_spec_edited_after_saving_is_rejected(tiny_checkpoint, tmp_path):
    _, path = tiny_checkpoint
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["moslim"]["spec"]["objectives"][0]["level_names"][0] = "useless"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="edited after saving"):
        MultiHeadRewardModel.from_pretrained(tmp_path)


@pytest.mark.unit
def test_a_plain_backbone_folder_is_not_a_moslim_checkpoint(minilm_dir, tmp_path):
    assert not is_moslim_checkpoint(minilm_dir) and not is_moslim_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not a MOSLIM reward-model checkpoint.*from_backbone"):
        MultiHeadRewardModel.from_pretrained(minilm_dir)


@pytest.mark.unit
def test_number_words_is_saved_with_the_checkpoint_absent_reads_plain_and_the_earlier_numbering_is_refused(
    tmp_path, smollm2_dir
):
    path = tmp_path / "rm"
    MultiHeadRewardModel(tiny_llama(), SPEC, number_words=True).save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["moslim"]["number_words"] == NUMBERED_WORDS
    assert MultiHeadRewardModel.from_pretrained(path).number_words is True
    # A checkpoint from before the key existed was trained on plain responses.
    config = json.loads((path / "config.json").read_text())
    del config["moslim"]["number_words"]
    (path / "config.json").write_text(json.dumps(config))
    assert MultiHeadRewardModel.from_pretrained(path).number_words is False
    # `true`: numbered by the earlier scheme, where the response's numerals could imitate the indices.
    config["moslim"]["number_words"] = True
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="moslim.number_words true: .* an earlier version .* retrain it"):
        MultiHeadRewardModel.from_pretrained(path)
    config["moslim"]["number_words"] = "yes"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="moslim.number_words: expected false or 'spelled_digits', got 'yes'"):
        MultiHeadRewardModel.from_pretrained(path)


@pytest.mark.unit
def test_bad_pooling_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"pooling: expected 'auto' or one of \['last', 'cls', 'mean'\], got 'max'"):
        MultiHeadRewardModel(tiny_llama(), SPEC, pooling="max")
    with pytest.raises(ValueError, match="pooling 'mean' on causal model LlamaModel"):
        MultiHeadRewardModel(tiny_llama(), SPEC, pooling="mean")


def write_format_1(model, path):
    """What `save_pretrained` wrote before the model was a PreTrainedModel (format 1), reproduced file by file: the
    backbone's own config.json plus `moslim` and `value_head_prefix`, the backbone weights under its
    base_model_prefix, `heads.*`, and a zero `score.weight` (so that stock OpenRLHF loaded it)."""
    import copy

    backbone = model.backbone
    state = {f"{backbone.base_model_prefix}.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"heads.{k}": v for k, v in model.heads.state_dict().items()})
    state["score.weight"] = torch.zeros(1, backbone.config.hidden_size)
    path.mkdir(parents=True)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config = copy.deepcopy(backbone.config)
    config.architectures = [type(backbone).__name__]
    config.value_head_prefix = "score"
    config.moslim = {
        "format_version": 1,
        "spec": SPEC.to_dict(),
        "spec_fingerprint": SPEC.fingerprint,
        "pooling": model.pooling,
        "stats": model.stats.to_dict(),
    }
    config.save_pretrained(path)


@pytest.mark.integration
@pytest.mark.parametrize("make_backbone", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_a_format_1_checkpoint_loads_with_identical_logits_and_resaves_as_format_2(make_backbone, tmp_path):
    model = MultiHeadRewardModel(make_backbone(), SPEC).eval()
    model.stats = random_stats()
    write_format_1(model, tmp_path / "v1")
    assert is_moslim_checkpoint(tmp_path / "v1")
    loaded = MultiHeadRewardModel.from_pretrained(tmp_path / "v1", spec=SPEC, attn_implementation="eager")
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], "left")
    with torch.no_grad():
        expected = model(ids, mask)
        assert torch.equal(loaded(ids, mask), expected)
    assert loaded.pooling == model.pooling and torch.equal(loaded.stats.mean, model.stats.mean)

    loaded.save_pretrained(tmp_path / "v2")
    config = json.loads((tmp_path / "v2" / "config.json").read_text())
    assert config["model_type"] == "moslim_multihead" and config["moslim"]["format_version"] == 2
    assert config["backbone_config"]["model_type"] == model.backbone.config.model_type
    # The same weight names as format 1, less the zero value head stock OpenRLHF needed.
    names = set(load_file(tmp_path / "v1" / "model.safetensors")) - {"score.weight"}
    assert set(load_file(tmp_path / "v2" / "model.safetensors")) == names
    again = MultiHeadRewardModel.from_pretrained(tmp_path / "v2", attn_implementation="eager")
    with torch.no_grad():
        assert torch.equal(again(ids, mask), expected)


@pytest.mark.integration
def test_auto_classes_load_the_checkpoint_in_process_without_remote_code(tiny_checkpoint):
    from transformers import AutoConfig, AutoModel

    model, path = tiny_checkpoint
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "moslim_multihead" and "auto_map" not in config
    assert isinstance(AutoConfig.from_pretrained(path, trust_remote_code=False), MoslimRMConfig)
    auto = AutoModel.from_pretrained(path, trust_remote_code=False, attn_implementation="eager")
    assert type(auto) is MultiHeadRewardModel and not auto.training
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], "right")
    with torch.no_grad():
        assert torch.equal(auto(ids, mask), model(ids, mask))


@pytest.mark.integration
def test_bf16_load_with_a_device_map_keeps_fp32_heads_and_fp32_logits(tiny_checkpoint):
    model, path = tiny_checkpoint
    bf16 = MultiHeadRewardModel.from_pretrained(
        path, dtype=torch.bfloat16, device_map="cpu", attn_implementation="eager"
    )
    assert {p.device.type for p in bf16.parameters()} == {"cpu"}
    assert all(p.dtype == torch.bfloat16 for p in bf16.backbone.parameters())
    assert all(p.dtype == torch.float32 for p in bf16.heads.parameters())
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], "left")
    with torch.no_grad():
        logits, reference = bf16(ids, mask), model(ids, mask)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0)


@pytest.mark.integration
def test_gradient_checkpointing_reaches_the_backbone_and_gives_the_same_loss_and_grads():
    model = MultiHeadRewardModel(tiny_llama(), SPEC).train()
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10], [11, 12, 13]], "right")
    labels = torch.tensor([[0, 4, 1], [2, 3, 0], [1, 1, 1]])
    # Count the calls of one layer's MLP (torch fires no forward hooks while recomputing, so count in forward).
    calls, mlp = [], model.backbone.layers[0].mlp
    mlp.forward = lambda *a, _forward=mlp.forward, **k: calls.append(1) or _forward(*a, **k)

    def loss_and_grads():
        model.zero_grad()
        calls.clear()
        loss = torch.nn.functional.cross_entropy(model(ids, mask).flatten(0, 1), labels.flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    plain_loss, plain_grads, plain_calls = loss_and_grads()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and all(layer.gradient_checkpointing for layer in model.backbone.layers)
    ckpt_loss, ckpt_grads, ckpt_calls = loss_and_grads()
    assert (plain_calls, ckpt_calls) == (1, 2), "checkpointing recomputes the layer's forward during backward"
    assert torch.equal(ckpt_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=0, atol=1e-6, msg=name)


@pytest.mark.integration
def test_pickle_weights_are_refused_on_load_and_on_save(tiny_checkpoint, tmp_path):
    model, path = tiny_checkpoint
    (tmp_path / "config.json").write_bytes((path / "config.json").read_bytes())
    torch.save(load_file(path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"safetensors only.*pytorch_model\.bin"):
        MultiHeadRewardModel.from_pretrained(tmp_path)
    with pytest.raises(UserError, match="use_safetensors=True"):
        MultiHeadRewardModel.from_pretrained(path, use_safetensors=False)
    with pytest.raises(UserError, match="safetensors only"):
        model.save_pretrained(tmp_path / "out", safe_serialization=False)
