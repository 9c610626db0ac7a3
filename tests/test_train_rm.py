import json

import pytest
import torch

from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.train_rm import IGNORE, head_losses, head_metrics, load_rows, main, train_reward_model

SPEC = load_spec("hh")  # helpful (2 levels), harmless (2 levels)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_dir):
    """A random-init 2-layer BERT with MiniLM's real tokenizer: the training loop, not the weights, is tested."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return path


def synthetic_rows(n):
    """helpful = 1 iff the response says 'sure'; harmless = 1 iff it does not say 'poison'; some labels missing."""
    rows = []
    for i in range(n):
        helpful, harmless = i % 2, (i // 2) % 2
        response = ("sure, here it is" if helpful else "no idea") + (" with poison" if not harmless else " safely")
        labels = {"helpful": helpful, "harmless": harmless}
        if i % 5 == 0:
            labels["harmless"] = None
        rows.append({"question": f"question {i}", "response": response, "labels": labels})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.unit
def test_missing_label_masks_its_head_and_only_that_head():
    logits = torch.randn(4, 2, 2, requires_grad=True)
    labels = torch.tensor([[1, IGNORE], [0, IGNORE], [1, IGNORE], [0, IGNORE]])
    losses = head_losses(logits, labels, SPEC)
    assert losses[1] is None
    losses[0].backward()
    assert logits.grad[:, 1].abs().sum() == 0 and logits.grad[:, 0].abs().sum() > 0


@pytest.mark.unit
def test_label_smoothing_and_class_weights_change_the_loss_as_defined():
    logits = torch.tensor([[[10.0, -10.0], [0.0, 0.0]], [[-10.0, 10.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, 0], [1, 1]])
    plain = head_losses(logits, labels, SPEC)
    assert plain[0].item() < 1e-6  # confident and right
    assert head_losses(logits, labels, SPEC, label_smoothing=0.2)[0].item() > 1.0  # smoothing penalises confidence
    wrong = torch.tensor([[1, 0], [1, 1]])  # row 0 now wrong on head 0
    weights = [torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])]
    weighted = head_losses(logits, wrong, SPEC, class_weights=weights)[0].item()
    assert weighted == pytest.approx((3 * 20 + 3 * 0) / 6, abs=1e-4)  # weighted mean of per-row CE (20 and 0)


@pytest.mark.unit
def test_head_metrics_match_hand_computed_values():
    spec = load_spec({"objectives": [{"name": "a", "levels": 3}]})
    probs = torch.tensor([[[0.9, 0.1, 0.0]], [[0.2, 0.7, 0.1]], [[0.6, 0.3, 0.1]], [[0.1, 0.1, 0.8]]])
    labels = torch.tensor([[0], [1], [2], [IGNORE]])  # predictions 0, 1, 0: two right, one off by 2
    m = head_metrics(probs, labels, spec)["a"]
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3) and m["mae"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # F1 per class: 0 -> 2/3, 1 -> 1, 2 -> 0
    # bins: 0.9 (right), 0.7 (right), 0.6 (wrong): |0.9-1|/3 + |0.7-1|/3 + |0.6-0|/3
    assert m["ece"] == pytest.approx((0.1 + 0.3 + 0.6) / 3)


@pytest.mark.unit
def test_bad_label_fails_naming_file_row_and_value_before_any_model_is_built(tmp_path):
    rows = synthetic_rows(6)
    rows[4]["labels"]["helpful"] = 2
    data = write_jsonl(tmp_path / "ratings.jsonl", rows)
    argv = ["--model.model_name_or_path", str(tmp_path / "no-such-model"), "--moslim.spec", "hh"]
    with pytest.raises(ValueError, match=r"ratings\.jsonl: row 4: label helpful=2 is not a level of 'helpful'"):
        main(argv + ["--data.dataset", data])
    rows[4]["labels"] = {"helpfulness": 1}
    with pytest.raises(ValueError, match=r"row 4: unknown objective 'helpfulness'"):
        load_rows(rows, SPEC, "x.jsonl")
    with pytest.raises(ValueError, match=r"empty\.jsonl: the dataset is empty"):
        main(argv + ["--data.dataset", write_jsonl(tmp_path / "empty.jsonl", [])])


@pytest.mark.integration
def test_train_rm_learns_writes_metrics_and_calibration_stats_into_the_checkpoint(tmp_path, tiny_bert):
    from moslim_plugin.core.rm import MultiHeadRewardModel

    data = write_jsonl(tmp_path / "ratings.jsonl", synthetic_rows(160))
    out = tmp_path / "rm"
    argv = ["--model.model_name_or_path", str(tiny_bert), "--moslim.spec", "hh", "--data.dataset", data]
    argv += ["--ckpt.output_dir", str(out), "--train.micro_batch_size", "8", "--train.batch_size", "16"]
    argv += ["--train.max_epochs", "3", "--adam.lr", "3e-3", "--data.max_len", "32", "--moslim.eval_ratio", "0.25"]
    argv += ["--logger.tensorboard_dir", str(tmp_path / "tb"), "--moslim.class_weights", "balanced"]
    assert main(argv) == 0
    result = json.loads((out / "eval_metrics.json").read_text())
    assert result["eval_rows"] > 20 and result["train_rows"] + result["eval_rows"] == 160
    assert result["metrics"]["helpful"]["accuracy"] > 0.9  # the word 'sure' decides helpfulness
    assert {"accuracy", "macro_f1", "mae", "ece", "nll", "majority_accuracy", "prior_nll", "confusion"} <= set(
        result["metrics"]["harmless"]
    )
    model = MultiHeadRewardModel.from_pretrained(out)
    assert model.stats is not None and model.stats.count[0, 0].item() == result["eval_rows"]
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


@pytest.mark.integration
def test_resumed_training_reaches_the_same_weights_as_uninterrupted_training(tmp_path, tiny_bert):
    rows = synthetic_rows(64)
    common = dict(micro_batch_size=4, batch_size=8, max_steps=6, lr=1e-3, max_len=32, eval_ratio=0.2)
    full = tmp_path / "full"
    train_reward_model(rows, SPEC, tiny_bert, full, save_steps=3, path=str(tmp_path / "ckpt_full"), **common)
    # Same run, but started from the step-3 checkpoint of the first one (a fresh process would see the same).
    resumed = tmp_path / "resumed"
    train_reward_model(rows, SPEC, tiny_bert, resumed, load_enable=True, path=str(tmp_path / "ckpt_full"), **common)
    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # And resuming is not a no-op: three steps on from step 3 differ from step 3 itself.
    fresh = tmp_path / "three"
    train_reward_model(rows, SPEC, tiny_bert, fresh, **{**common, "max_steps": 3})
    assert not torch.equal(load_file(fresh / "model.safetensors")["heads.0.weight"], a["heads.0.weight"])


@pytest.mark.integration
def test_lora_training_saves_merged_weights_that_change_only_the_adapted_layers(tmp_path, tiny_bert):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    flags = dict(micro_batch_size=8, batch_size=8, max_steps=2, lr=1e-2, max_len=32, eval_ratio=0.2)
    train_reward_model(
        synthetic_rows(40),
        SPEC,
        tiny_bert,
        out,
        rank=4,
        target_modules=["query"],
        gradient_checkpointing_enable=True,
        **flags,
    )
    before, after = load_file(tiny_bert / "model.safetensors"), load_file(out / "model.safetensors")
    assert not any("lora" in key for key in after)
    query, key = "encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.key.weight"
    assert not torch.allclose(before[query], after["bert." + query])  # LoRA delta merged in
    torch.testing.assert_close(before[key], after["bert." + key], rtol=0, atol=0)  # not adapted: untouched
