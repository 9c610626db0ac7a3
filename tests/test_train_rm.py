import json
import math
import re

import pytest
import torch

from moslim_plugin.core.spec import load_spec
from moslim_plugin.data.rm_metrics import IGNORE, head_losses, head_metrics
from moslim_plugin.data.rm_rows import load_rows
from moslim_plugin.data.train_rm import TrainRMConfig, main, train_reward_model

SPEC = load_spec("hh")  # helpful (2 levels), harmless (2 levels)


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


def train(rows, spec, backbone, out, **fields):
    """train_reward_model on rows in memory: the config's required fields, then the test's own."""
    config = TrainRMConfig(model_name_or_path=str(backbone), spec=spec, output_dir=str(out), **fields)
    return train_reward_model(config, rows)


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
    with pytest.raises(ValueError, match=r"ratings\.jsonl: row 4: labels: level 2 for 'helpful' is out of range"):
        main(argv + ["--data.dataset", data])
    rows[4]["labels"] = {"helpfulness": 1}
    with pytest.raises(ValueError, match=r"row 4: labels: unknown objective 'helpfulness'"):
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
    helpful = result["metrics"]["helpful"]
    assert helpful["accuracy"] > 0.9 and helpful["accuracy"] > helpful["majority_accuracy"] + 0.3  # "sure" decides
    assert {"accuracy", "macro_f1", "mae", "ece", "nll", "majority_accuracy", "prior_nll", "confusion"} <= set(
        result["metrics"]["harmless"]
    )
    model = MultiHeadRewardModel.from_pretrained(out)
    assert model.stats is not None and model.stats.count[0, 0].item() == result["eval_rows"]
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


# hh's helpful head beside an exact rule: "says poison" (the synthetic harmless label, inverted) checked by a regex.
MIXED = load_spec(
    {"objectives": [{"name": "helpful", "levels": 2},
                    {"name": "poison", "levels": 2, "rule": {"name": "regex", "pattern": "poison"}}]}
)  # fmt: skip


@pytest.mark.integration
def test_train_rm_trains_heads_for_learned_objectives_only_and_ignores_rule_labels_with_a_note(
    tmp_path, tiny_bert, capsys
):
    from moslim_plugin.core.rm import MultiHeadRewardModel
    from moslim_plugin.core.scorer import Scorer

    rows = synthetic_rows(64)
    for row in rows:  # the same file, relabelled for the mixed spec: "poison" labels too, which train-rm ignores
        harmless = row["labels"].pop("harmless")
        row["labels"]["poison"] = None if harmless is None else 1 - harmless
    out = tmp_path / "rm"
    result = train(rows, MIXED, tiny_bert, out, micro_batch_size=8, batch_size=16, max_epochs=1, max_len=32)
    labelled = sum(row["labels"]["poison"] is not None for row in rows)
    assert f"labels for rule objectives are ignored: poison ({labelled} rows)" in capsys.readouterr().out
    assert set(result["metrics"]) == {"helpful"}  # no head, no metrics for the rule
    model = MultiHeadRewardModel.from_pretrained(out, spec=MIXED)  # the checkpoint carries the whole spec
    assert len(model.heads) == 1 and model.stats.levels == (2,)
    scored = Scorer.from_pretrained(out).score(["q"] * 2, ["no idea with poison", "sure"], [{"poison": 1}] * 2)
    assert scored.probs[:, 1, :2].tolist() == [[0.0, 1.0], [1.0, 0.0]]  # the rule, exact


@pytest.mark.unit
def test_train_rm_refuses_a_spec_of_rules_only_and_rows_without_a_learned_label(tmp_path):
    rules = load_spec({"objectives": [MIXED.objectives[1].to_dict()]})
    with pytest.raises(ValueError, match="every objective is a rule, so there is no reward-model head"):
        train(synthetic_rows(8), rules, tmp_path / "backbone", tmp_path / "rm")
    rows = [{"question": f"q{i}", "response": "r", "labels": {"poison": 0}} for i in range(8)]
    with pytest.raises(ValueError, match=r"no row has a label for a learned objective \['helpful'\]"):
        train(rows, MIXED, tmp_path / "backbone", tmp_path / "rm", batch_size=1)


@pytest.mark.integration
def test_a_head_can_tell_a_list_from_the_same_words_on_one_line_through_a_newline_folding_tokenizer(
    tmp_path, tiny_bert, smollm2_dir
):
    """MiniLM's tokenizer reads "- a\n- b" and "- a - b" the same; train-rm gives it a line-break token, saved with the
    checkpoint, so the scorer reads the line breaks training saw and a head can learn them."""
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.data.rm_rows import load_tokenizer

    rows = []
    for i in range(96):  # helpful = 1 iff the items are on separate lines: the words are the same either way
        items = [f"- item {w}" for w in ("one", "two", "three", "four")[: 2 + i % 3]]
        helpful = (i // 3) % 2
        rows.append({"question": f"q {i}", "response": ("\n" if helpful else " ").join(items),
                     "labels": {"helpful": helpful, "harmless": 1}})  # fmt: skip
    common = dict(micro_batch_size=8, batch_size=8, max_epochs=4, lr=3e-3, max_len=32, eval_ratio=0.25)
    result = train(rows, SPEC, tiny_bert, tmp_path / "rm", **common)
    assert result["metrics"]["helpful"]["accuracy"] > 0.9  # folded, both kinds are one input: 0.5 at best

    scorer = Scorer.from_pretrained(tmp_path / "rm")
    assert scorer.tokenizer("- a\n- b")["input_ids"] != scorer.tokenizer("- a - b")["input_ids"]
    assert scorer.model.backbone.get_input_embeddings().num_embeddings == len(scorer.tokenizer)
    probs = scorer.classify(["q"] * 2, ["- item one\n- item two\n- item three", "- item one - item two - item three"])
    assert probs[0, 0, 1] > probs[1, 0, 1]  # folded, the two would be one input with one probability
    # A tokenizer that already keeps line breaks (SmolLM2's) is left as it is.
    from transformers import AutoTokenizer

    assert len(load_tokenizer(smollm2_dir)) == len(AutoTokenizer.from_pretrained(smollm2_dir))


@pytest.mark.integration
def test_a_number_words_rm_is_scored_on_the_numbered_words_it_was_trained_on(tmp_path, tiny_bert):
    """train-rm --moslim.number_words: the held-out metrics train-rm reports are what the checkpoint's Scorer
    measures on the same rows (so both read numbered words); read plain, the same weights measure otherwise."""
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.data.evaluate_rm import evaluate_ratings
    from moslim_plugin.data.rm_rows import split_by_group

    rows = []
    for i in range(96):  # helpful = 1 iff the response has more than 6 words
        words = ["word"] * (3 + i % 8)
        rows.append({"question": f"q {i}", "response": " ".join(words), "labels": {"helpful": int(len(words) > 6),
                     "harmless": 1}})  # fmt: skip
    flags = dict(micro_batch_size=8, batch_size=8, max_epochs=2, lr=3e-3, max_len=48, eval_ratio=0.25, seed=0)
    result = train(rows, SPEC, tiny_bert, tmp_path / "rm", number_words=True, **flags)
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["moslim"]["number_words"] == "spelled_digits"

    _, heldout, _ = split_by_group(rows, 0.25, 0)
    scorer = Scorer.from_pretrained(tmp_path / "rm", max_length=48)
    measured = evaluate_ratings(scorer, heldout)["heads"]["helpful"]
    assert measured["n"] == result["metrics"]["helpful"]["n"] == len(heldout)
    assert measured["nll"] == pytest.approx(result["metrics"]["helpful"]["nll"], abs=1e-5)
    scorer.model.number_words = False
    plain = evaluate_ratings(scorer, heldout)["heads"]["helpful"]
    assert abs(plain["nll"] - measured["nll"]) > 1e-3


@pytest.mark.integration
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_device_flag_trains_in_this_process_on_that_device_and_saves_a_loadable_model(tmp_path, tiny_bert, device):
    """--device cpu / cuda: plain torch in this process (no DeepSpeed launcher), as the demo runs it."""
    from moslim_plugin.core.rm import MultiHeadRewardModel

    common = dict(micro_batch_size=8, batch_size=8, max_steps=6, lr=1e-3, max_len=32, eval_ratio=0.25)
    result = train(synthetic_rows(64), SPEC, tiny_bert, tmp_path / "rm", device=device, **common)
    model = MultiHeadRewardModel.from_pretrained(tmp_path / "rm")
    assert model.stats is not None and model.stats.count[0, 0].item() == result["eval_rows"] > 0
    assert all(math.isfinite(m["nll"]) for m in result["metrics"].values())
    if device == "cuda":
        assert torch.cuda.max_memory_allocated() > 0  # it did run there


@pytest.mark.integration
def test_resumed_training_reaches_the_same_weights_as_uninterrupted_training(tmp_path, tiny_bert):
    rows = synthetic_rows(64)
    common = dict(micro_batch_size=4, batch_size=8, max_steps=6, lr=1e-3, max_len=32, eval_ratio=0.2)
    full = tmp_path / "full"
    train(rows, SPEC, tiny_bert, full, save_steps=3, ckpt_path=str(tmp_path / "ckpt_full"), **common)
    # Same run, but started from the step-3 checkpoint of the first one (a fresh process would see the same).
    resumed = tmp_path / "resumed"
    train(rows, SPEC, tiny_bert, resumed, load_enable=True, ckpt_path=str(tmp_path / "ckpt_full"), **common)
    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # And resuming is not a no-op: three steps on from step 3 differ from step 3 itself.
    fresh = tmp_path / "three"
    train(rows, SPEC, tiny_bert, fresh, **{**common, "max_steps": 3})
    assert not torch.equal(load_file(fresh / "model.safetensors")["heads.0.weight"], a["heads.0.weight"])


@pytest.mark.integration
def test_lora_training_saves_merged_weights_that_change_only_the_adapted_layers(tmp_path, tiny_bert):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    flags = dict(micro_batch_size=8, batch_size=8, max_steps=2, lr=1e-2, max_len=32, eval_ratio=0.2)
    train(
        synthetic_rows(40),
        SPEC,
        tiny_bert,
        out,
        lora_rank=4,
        lora_target_modules=["query"],
        gradient_checkpointing_enable=True,
        **flags,
    )
    before, after = load_file(tiny_bert / "model.safetensors"), load_file(out / "model.safetensors")
    assert not any("lora" in key for key in after)
    query, key = "encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.key.weight"
    assert not torch.allclose(before[query], after["bert." + query])  # LoRA delta merged in
    torch.testing.assert_close(before[key], after["bert." + key], rtol=0, atol=0)  # not adapted: untouched


def noise_rows(n, seed=0):
    """helpful is 1 for 30 % of rows at random, whatever the text says: nothing to learn but the prior."""
    import random

    rng = random.Random(seed)
    words = ["sure", "no", "maybe", "poison", "safely", "here", "idea", "it", "with", "is"]
    return [
        {
            "question": f"question {i}",
            "response": " ".join(rng.choice(words) for _ in range(6)),
            "labels": {"helpful": int(rng.random() < 0.3), "harmless": None},
        }
        for i in range(n)
    ]


@pytest.mark.integration
def test_kept_model_on_labels_independent_of_the_text_is_no_worse_than_the_class_prior(tmp_path, tiny_bert):
    # A high learning rate and many epochs memorise the training noise; selection by held-out NLL must not keep that.
    flags = dict(micro_batch_size=8, batch_size=8, max_epochs=12, lr=5e-3, max_len=32, eval_ratio=0.3, patience=3)
    result = train(noise_rows(240), SPEC, tiny_bert, tmp_path / "rm", **flags)
    m = result["metrics"]["helpful"]
    assert m["nll"] <= m["prior_nll"] + 0.03, m
    assert m["accuracy"] >= m["majority_accuracy"] - 0.03, m
    history = result["selection"]["history"]
    best_step, best_value = min(history, key=lambda h: h[1])
    assert result["selection"]["best_step"] == best_step
    # Early stopping: the run ended `patience` evaluations after the best one, before the 12 epochs.
    assert len(history) < 12 and history[-1][0] > best_step


@pytest.mark.unit
def test_batch_size_not_a_multiple_of_the_micro_batch_is_refused_naming_both():
    from moslim_plugin import UserError

    argv = ["--model.model_name_or_path", "m", "--moslim.spec", "hh", "--data.dataset", "d.jsonl"]
    with pytest.raises(UserError, match=r"--train.batch_size 8 is not a multiple of --train.micro_batch_size 3"):
        TrainRMConfig.from_argv(argv + ["--train.batch_size", "8", "--train.micro_batch_size", "3"])
    with pytest.raises(UserError, match=r"--train.batch_size 8 is not a multiple of --train.micro_batch_size 3"):
        TrainRMConfig(model_name_or_path="m", spec="hh", batch_size=8, micro_batch_size=3)


@pytest.mark.integration
def test_output_dir_holding_a_model_is_refused_unless_overwrite(tmp_path, tiny_bert):
    from moslim_plugin import UserError

    flags = dict(micro_batch_size=8, batch_size=8, max_steps=1, lr=1e-3, max_len=32, eval_ratio=0.2)
    train(synthetic_rows(40), SPEC, tiny_bert, tmp_path / "rm", **flags)
    with pytest.raises(UserError, match=r"rm already holds a model .*--ckpt.overwrite"):
        train(synthetic_rows(40), SPEC, tiny_bert, tmp_path / "rm", **flags)
    train(synthetic_rows(40), SPEC, tiny_bert, tmp_path / "rm", overwrite=True, **flags)


@pytest.mark.integration
def test_resume_refuses_other_objectives_head_shapes_batching_or_word_numbering_naming_both_values(
    tmp_path, tiny_bert
):
    from moslim_plugin import UserError

    rows, ckpt = synthetic_rows(48), str(tmp_path / "ckpt")
    common = dict(micro_batch_size=4, batch_size=8, max_steps=2, lr=1e-3, max_len=32, eval_ratio=0.2, ckpt_path=ckpt)
    train(rows, SPEC, tiny_bert, tmp_path / "a", save_steps=2, **common)
    swapped = {"objectives": [{"name": "harmless", "levels": 2}, {"name": "helpful", "levels": 2}]}
    with pytest.raises(
        UserError, match=r"objectives=\['helpful', 'harmless'\], this run has \['harmless', 'helpful'\]"
    ):
        train(rows, swapped, tiny_bert, tmp_path / "b", load_enable=True, **common)
    wider = {"objectives": [{"name": "helpful", "levels": 3}, {"name": "harmless", "levels": 2}]}
    with pytest.raises(UserError, match=r"head_levels=\[2, 2\], this run has \[3, 2\]"):
        train(rows, wider, tiny_bert, tmp_path / "c", load_enable=True, **common)
    with pytest.raises(UserError, match=r"train.batch_size=8, this run has 16"):
        train(rows, SPEC, tiny_bert, tmp_path / "d", load_enable=True, **{**common, "batch_size": 16})
    # The saved best value is an NLL: resuming with macro-F1 selection would compare it with 1 - F1.
    with pytest.raises(UserError, match=r"moslim.select='nll', this run has 'macro_f1'"):
        train(rows, SPEC, tiny_bert, tmp_path / "e", load_enable=True, select="macro_f1", **common)
    with pytest.raises(UserError, match=r"moslim.number_words=False, this run has 'spelled_digits'"):
        train(rows, SPEC, tiny_bert, tmp_path / "f", load_enable=True, number_words=True, **common)


@pytest.mark.integration
def test_selection_by_macro_f1_keeps_the_evaluation_with_the_best_mean_macro_f1(tmp_path, tiny_bert):
    flags = dict(micro_batch_size=8, batch_size=8, max_epochs=4, lr=3e-3, max_len=32, eval_ratio=0.25, patience=0)
    result = train(synthetic_rows(96), SPEC, tiny_bert, tmp_path / "rm", select="macro_f1", **flags)
    assert result["selection"]["criterion"].startswith("mean per-head macro-F1")
    history = result["selection"]["history"]
    assert len(history) == 4  # patience 0: every epoch evaluated
    best_step, best_loss = min(history, key=lambda h: h[1])  # the history holds 1 - mean macro-F1
    assert result["selection"]["best_step"] == best_step
    # The kept weights are that evaluation's: re-measured on the same held-out rows, the same mean macro-F1.
    kept = [m["macro_f1"] for m in result["metrics"].values() if m["n"]]
    assert sum(kept) / len(kept) == pytest.approx(1 - best_loss, abs=1e-6)


@pytest.mark.integration
def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one_and_stays_exact(tmp_path, tiny_bert, capsys):
    from safetensors.torch import load_file

    from moslim_plugin import UserError

    rows, ckpt = synthetic_rows(64), tmp_path / "ckpt"
    common = dict(
        micro_batch_size=4, batch_size=8, max_steps=6, lr=1e-3, max_len=32, eval_ratio=0.2, ckpt_path=str(ckpt)
    )
    train(rows, SPEC, tiny_bert, tmp_path / "full", save_steps=2, **common)
    latest = ckpt / "global_step6" / "state.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # a save cut short
    train(rows, SPEC, tiny_bert, tmp_path / "resumed", load_enable=True, **common)
    out = capsys.readouterr().out
    assert f"checkpoint file {latest} is unreadable" in out and "global_step4" in out
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # The resumed run saved a good global_step6 again at its evaluation; now every checkpoint is cut short.
    for tag in ("global_step2", "global_step4", "global_step6"):
        (ckpt / tag / "state.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"no readable checkpoint to resume from; bad: .*global_step6"):
        train(rows, SPEC, tiny_bert, tmp_path / "none", load_enable=True, **common)


@pytest.mark.unit
def test_the_command_line_is_the_configs_fields_with_their_defaults():
    import dataclasses

    from moslim_plugin import flag_of
    from moslim_plugin.data.rm_config import PREFIX, build_parser

    required = ["--model.model_name_or_path", "m", "--moslim.spec", "hh"]
    assert TrainRMConfig.from_argv(required) == TrainRMConfig(model_name_or_path="m", spec="hh")  # same defaults
    flags = {action.option_strings[0] for action in build_parser()._actions if action.dest != "help"}
    assert flags == {flag_of(f, PREFIX) for f in dataclasses.fields(TrainRMConfig)}
    assert "--train.batch_size" in flags and "--moslim.number_words" in flags and "--lr_scheduler" in flags
    # A flag sets its own field, in OpenRLHF's names, and OpenRLHF's strategy reads the nested layout.
    config = TrainRMConfig.from_argv(
        [*required, "--ds.lora.rank", "4", "--ckpt.path", "c", "--adam.betas", "0.8", "0.9"]
    )
    assert (config.lora_rank, config.ckpt_path, config.adam_betas) == (4, "c", [0.8, 0.9])
    nested = config.strategy_args()
    assert (nested.ds.lora.rank, nested.ckpt.path, nested.train.batch_size) == (4, "c", config.batch_size)


@pytest.mark.unit
def test_a_config_built_in_python_is_refused_where_the_command_line_would_be():
    from moslim_plugin import UserError

    with pytest.raises(UserError, match=r"--train.micro_batch_size 0: expected an integer >= 1"):
        TrainRMConfig(model_name_or_path="m", spec="hh", micro_batch_size=0)
    with pytest.raises(UserError, match=r"--moslim.pooling 'max': expected one of \['auto', 'last', 'cls', 'mean'\]"):
        TrainRMConfig(model_name_or_path="m", spec="hh", pooling="max")
    with pytest.raises(UserError, match=r"--moslim.spec is required"):
        TrainRMConfig(model_name_or_path="m")
    with pytest.raises(UserError, match=r"rows in memory and --data.dataset d.jsonl: give one of them"):
        train_reward_model(TrainRMConfig(model_name_or_path="m", spec="hh", dataset="d.jsonl"), synthetic_rows(4))
    with pytest.raises(UserError, match=r"--data.dataset is required"):
        train_reward_model(TrainRMConfig(model_name_or_path="m", spec="hh"))


@pytest.mark.integration
def test_each_evaluation_is_printed_as_it_happens_with_both_baselines(tmp_path, tiny_bert, capsys):
    flags = dict(micro_batch_size=8, batch_size=8, max_epochs=3, lr=3e-3, max_len=32, eval_ratio=0.25, patience=0)
    result = train(synthetic_rows(64), SPEC, tiny_bert, tmp_path / "rm", **flags)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[eval] step")]
    assert [line.split(":")[0] for line in lines] == [
        f"[eval] step {step}/{result['global_step']} (epoch {epoch}.0)" for step, epoch in ((6, 1), (12, 2), (18, 3))
    ]
    for line, (_, nll) in zip(lines, result["selection"]["history"]):
        assert f"NLL {nll:.4f}" in line  # the selection value the history recorded, at that step
        for head in ("helpful", "harmless"):
            assert re.search(rf"{head} acc [\d.]+ \(majority [\d.]+\) F1 [\d.]+ NLL [\d.]+ \(prior [\d.]+\)", line)


@pytest.mark.unit
@pytest.mark.parametrize("rows", [30, 100, 210, 450, 1000, 2500])
def test_the_small_data_warning_names_batch_size_and_epochs_that_give_enough_steps(rows):
    from moslim_plugin.data.train_rm import MIN_STEPS, small_data_advice

    config = TrainRMConfig(model_name_or_path="m", spec="hh", micro_batch_size=4)  # batch 128, 1 epoch: defaults
    per_epoch = rows // config.batch_size
    advice = small_data_advice(config, rows, per_epoch, per_epoch)
    if per_epoch >= MIN_STEPS:
        assert advice is None
        return
    assert f"{per_epoch} optimizer steps in all" in advice
    suggested = advice.rsplit(" rows: ", 1)[1]
    named = dict(re.findall(r"--train\.(batch_size|max_epochs) (\d+)", suggested))
    batch, epochs = int(named.get("batch_size", config.batch_size)), int(named["max_epochs"])
    # The values it names, given back as flags, give enough steps and a valid configuration.
    followed = TrainRMConfig(
        model_name_or_path="m", spec="hh", micro_batch_size=4, batch_size=batch, max_epochs=epochs
    )
    assert (rows // batch) * epochs >= MIN_STEPS
    assert small_data_advice(followed, rows, rows // batch, (rows // batch) * epochs) is None
    capped = TrainRMConfig(model_name_or_path="m", spec="hh", max_steps=5)
    assert "--train.max_steps 5): set --train.max_steps 20 or more" in small_data_advice(capped, rows, 1, 5)


@pytest.mark.unit
def test_eval_ratio_holds_out_that_share_of_groups_within_one_group():
    from moslim_plugin.data.rm_rows import split_by_group

    # 60 contexts with 1 to 9 responses each: the hashed threshold held out 22 % of them for a ratio of 0.15.
    rows = [
        {"question": f"context {c}", "response": str(r), "labels": {}} for c in range(60) for r in range(1 + c % 9)
    ]
    for ratio in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5):
        for seed in range(5):
            train_rows, held, record = split_by_group(rows, ratio, seed)
            held_groups = {r["question"] for r in held}
            assert not held_groups & {r["question"] for r in train_rows}
            assert len(held_groups) == record["held_out_groups"] and abs(len(held_groups) - ratio * 60) <= 1
            assert len(train_rows) + len(held) == len(rows)
    assert split_by_group(rows, 0.15, 0)[2] == split_by_group(rows, 0.15, 0)[2]  # the same split every time


@pytest.mark.unit
def test_split_key_groups_rows_by_any_column_or_template_before_the_split():
    from moslim_plugin import UserError
    from moslim_plugin.data.rm_rows import split_by_group

    # Several questions (turns) per conversation: by question a conversation would land in both parts.
    rows = [
        {"question": f"turn {t} of {c}", "response": "r", "labels": {}, "conv": c, "meta": {"topic": c % 3}}
        for c in range(20)
        for t in range(4)
    ]
    by_question = split_by_group(rows, 0.25, 1)
    assert {r["conv"] for r in by_question[0]} & {r["conv"] for r in by_question[1]}
    train_rows, held, record = split_by_group(rows, 0.25, 1, key="conv")
    assert not {r["conv"] for r in train_rows} & {r["conv"] for r in held} and record["groups"] == 20
    train_rows, held, record = split_by_group(rows, 0.34, 1, key="topic {meta.topic}")
    assert record["groups"] == 3 and not {r["meta"]["topic"] for r in train_rows} & {r["meta"]["topic"] for r in held}
    with pytest.raises(UserError, match=r"rows\.jsonl: row 0: no 'dialogue_id' to group by \(--moslim\.split_key\)"):
        split_by_group(rows, 0.25, 1, key="dialogue_id", source="rows.jsonl")
    with pytest.raises(UserError, match="one group, nothing to hold out"):
        split_by_group(rows, 0.25, 1, key="response")


@pytest.mark.integration
def test_the_split_is_written_next_to_the_model_and_evaluate_rm_measures_those_rows(tmp_path, tiny_bert):
    from moslim_plugin.cli import main as cli

    rows = [dict(r, conv=i // 4) for i, r in enumerate(synthetic_rows(96))]
    # 12 tokens cut every pair: scored at any other length the held-out rows would read differently.
    flags = dict(micro_batch_size=8, batch_size=8, max_epochs=2, lr=3e-3, max_len=12, eval_ratio=0.25)
    result = train(rows, SPEC, tiny_bert, tmp_path / "rm", split_key="conv", **flags)
    split = json.loads((tmp_path / "rm" / "split.json").read_text())
    assert split == result["split"] and (split["split_key"], split["groups"], split["held_out_groups"]) == (
        "conv",
        24,
        6,
    )
    held = [json.loads(line) for line in (tmp_path / "rm" / "held_out.jsonl").read_text().splitlines()]
    assert len(held) == result["eval_rows"] == 24 and len({r["conv"] for r in held}) == 6
    out = tmp_path / "eval"
    assert cli(["evaluate-rm", "--model", str(tmp_path / "rm"), "--output_dir", str(out)]) == 0  # no length given
    report = json.loads((out / "report.json").read_text())
    assert report["data"].endswith("held_out.jsonl") and report["rows"] == 24 and report["max_length"] == 12
    assert report["heads"]["helpful"]["nll"] == pytest.approx(result["metrics"]["helpful"]["nll"], abs=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_evaluation_with_no_flag_given_in_advance(tmp_path, tiny_bert):
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "rows.jsonl", synthetic_rows(256))
    argv = [sys.executable, "-m", "moslim_plugin", "train-rm", "--model.model_name_or_path", str(tiny_bert)]
    argv += ["--moslim.spec", "hh", "--data.dataset", data, "--train.micro_batch_size", "8", "--train.batch_size"]
    argv += ["8", "--train.max_epochs", "8", "--adam.lr", "1e-3", "--data.max_len", "48", "--eval.patience", "0"]
    argv += ["--threads", "1"]
    run = subprocess.Popen([*argv, "--ckpt.output_dir", str(tmp_path / "rm")], stdout=subprocess.DEVNULL)
    checkpoints = tmp_path / "rm" / "checkpoints"
    while not list(checkpoints.glob("global_step*/moslim_resume.json")) and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL and not (tmp_path / "rm" / "config.json").exists()
    # The same command again: told how to resume; with --ckpt.load_enable it finishes where it left off.
    again = subprocess.run([*argv, "--ckpt.output_dir", str(tmp_path / "rm")], capture_output=True, text=True)
    assert again.returncode == 2 and "holds checkpoints of an earlier run" in again.stderr
    assert "--ckpt.load_enable to resume it" in again.stderr
    resumed = subprocess.run(
        [*argv, "--ckpt.output_dir", str(tmp_path / "rm"), "--ckpt.load_enable"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Loaded the checkpoint" in resumed.stdout and "[eval] step 28/224 " not in resumed.stdout
    whole = subprocess.run([*argv, "--ckpt.output_dir", str(tmp_path / "whole")], capture_output=True, text=True)
    assert whole.returncode == 0
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "rm" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.integration
def test_overwrite_starts_over_from_an_earlier_runs_checkpoints(tmp_path, tiny_bert):
    from moslim_plugin import UserError

    flags = dict(micro_batch_size=8, batch_size=8, max_steps=4, lr=1e-3, max_len=32, eval_ratio=0.25, eval_steps=2)
    train(synthetic_rows(48), SPEC, tiny_bert, tmp_path / "rm", **flags)
    assert sorted(p.name for p in (tmp_path / "rm" / "checkpoints").glob("global_step*")) == [
        "global_step2",
        "global_step4",
    ]
    (tmp_path / "rm" / "config.json").unlink()  # as if killed before the end
    (tmp_path / "rm" / "checkpoints" / "notes.txt").write_text("mine")  # the user's file in the folder stays
    with pytest.raises(UserError, match="holds checkpoints of an earlier run \\(newest: global_step4\\)"):
        train(synthetic_rows(48), SPEC, tiny_bert, tmp_path / "rm", **flags)
    result = train(synthetic_rows(48), SPEC, tiny_bert, tmp_path / "rm", overwrite=True, **{**flags, "max_steps": 2})
    assert result["global_step"] == 2
    assert sorted(p.name for p in (tmp_path / "rm" / "checkpoints").glob("global_step*")) == ["global_step2"]
    assert (tmp_path / "rm" / "checkpoints" / "notes.txt").read_text() == "mine"
    none = train(synthetic_rows(48), SPEC, tiny_bert, tmp_path / "none", max_num=0, **flags)
    assert none["global_step"] == 4 and not (tmp_path / "none" / "checkpoints").exists()


@pytest.mark.integration
def test_train_rm_threads_sets_the_torch_threads_it_trains_with(tmp_path, tiny_bert):
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    try:
        train(synthetic_rows(16), SPEC, tiny_bert, tmp_path / "rm", batch_size=8, max_steps=1, max_len=32,
              eval_ratio=0.25, threads=wanted)  # fmt: skip
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
