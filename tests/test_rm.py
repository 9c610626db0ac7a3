"""MultiHeadRewardModel: pooling, padding invariance, checkpoint round trip, stock OpenRLHF load, bad inputs."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaModel

from moslim_plugin.core.rm import PAD_LOGIT, MultiHeadRewardModel, is_moslim_checkpoint
from moslim_plugin.core.spec import load_spec

SPEC = load_spec("helpsteer")  # levels (5, 5, 2): the 2-level head is padded to 5 classes


def tiny_llama(dtype=torch.float32):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    return LlamaModel(config).to(dtype)


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
    assert config["moslim"]["spec_fingerprint"] == SPEC.fingerprint and config["value_head_prefix"] == "score"


@pytest.mark.integration
def test_mapping_statistics_survive_the_round_trip(tmp_path):
    from moslim_plugin.core.mappings import MappingStats

    model = MultiHeadRewardModel(tiny_llama(), SPEC)
    probs = torch.rand(7, 3, 5) * (torch.arange(5) < torch.tensor(SPEC.levels)[:, None])
    model.stats = MappingStats.from_probs(probs / probs.sum(-1, keepdim=True), SPEC.levels)
    model.save_pretrained(tmp_path)
    loaded = MultiHeadRewardModel.from_pretrained(tmp_path)
    for key in ("mean", "std", "count"):
        torch.testing.assert_close(getattr(loaded.stats, key), getattr(model.stats, key), rtol=0, atol=1e-12)
    assert json.loads((tmp_path / "config.json").read_text())["moslim"]["stats"]["levels"] == [5, 5, 2]


@pytest.mark.integration
def test_stock_openrlhf_loads_the_checkpoint_and_gives_a_constant_reward(tiny_checkpoint):
    from openrlhf.models import get_llm_for_sequence_regression

    _, path = tiny_checkpoint
    stock = get_llm_for_sequence_regression(str(path), "reward", param_dtype="bf16", attn_implementation="eager")
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10], [11, 12, 13]], "left")
    with torch.no_grad():
        rewards = stock(ids, attention_mask=mask)
    assert rewards.shape == (3,) and (rewards == 0).all()
    # The backbone weights did load (under base_model_prefix): the stock model's hidden states match ours.
    ours = MultiHeadRewardModel.from_pretrained(path)
    assert torch.equal(stock.model.embed_tokens.weight, ours.backbone.embed_tokens.weight.to(torch.bfloat16))


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
def test_bad_pooling_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"pooling: expected 'auto' or one of \['last', 'cls', 'mean'\], got 'max'"):
        MultiHeadRewardModel(tiny_llama(), SPEC, pooling="max")
    with pytest.raises(ValueError, match="pooling 'mean' on causal model LlamaModel"):
        MultiHeadRewardModel(tiny_llama(), SPEC, pooling="mean")
