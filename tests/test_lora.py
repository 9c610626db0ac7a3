"""LoRA in the local RL driver: OpenRLHF's --ds.lora.* flags (alias --actor.lora.*), peft adapters as its Actor adds.

A tiny random-init Llama with SmolLM2's tokenizer; what is checked is which parameters train and that checkpoints
round-trip, not what the weights know.
"""

import argparse

import pytest
import torch

from moslim_plugin.demo.local_rl import parse_rl_args, train_policy
from moslim_plugin.demo.policy import load_policy


def lora(rank=4, target_modules="all-linear"):
    return argparse.Namespace(rank=rank, alpha=8, dropout=0.0, target_modules=target_modules)


@pytest.mark.unit
def test_lora_flags_take_openrlhf_names_and_the_actor_alias():
    args = parse_rl_args(["--actor.lora.rank", "8", "--ds.lora.target_modules", "q_proj", "v_proj"])
    assert (args.ds.lora.rank, args.ds.lora.alpha, args.ds.lora.dropout) == (8, 16, 0)
    assert args.ds.lora.target_modules == ["q_proj", "v_proj"]
    assert parse_rl_args([]).ds.lora.rank == 0  # off by default, as in OpenRLHF


@pytest.mark.integration
def test_with_lora_only_adapters_in_the_top_layers_train_and_one_step_changes_the_output(tiny_policy):
    model, tok = load_policy(tiny_policy, 1, lora=lora())
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name and ".layers.2." in name for name in trained), trained
    ids = tok("Name a fruit.", return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(input_ids=ids).logits
        base = model.get_base_model()
        with model.disable_adapter():
            assert torch.equal(before, base(input_ids=ids).logits)  # LoRA's B starts at zero
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optim.step()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, before)


@pytest.mark.integration
def test_lora_rl_run_saves_an_adapter_that_loads_back_merged(tiny_policy, tmp_path):
    from peft import PeftModel

    out = tmp_path / "out"
    args = parse_rl_args([
        "--actor.model_name_or_path", str(tiny_policy), "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt",
        "2", "--rollout.max_new_tokens", "4", "--moslim.trainable_layers", "2", "--actor.lora.rank", "4",
        "--actor.adam.lr", "1e-2", "--ckpt.output_dir", str(out),
    ])  # fmt: skip
    rows = [{"question": q, "request": {}, "messages": [{"role": "user", "content": q}]} for q in ("Hi.", "Count.")]
    reward = lambda qs, responses, requests: (torch.tensor([float(len(r)) for r in responses]), {})  # noqa: E731
    result = train_policy(args, rows, reward, progress=False)
    trained = result["history"][-1]
    assert trained["grad_norm"] > 0
    assert (out / "adapter_config.json").exists()
    merged, _ = load_policy(out)
    assert not isinstance(merged, PeftModel)
    peft_model = PeftModel.from_pretrained(load_policy(tiny_policy)[0], out)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits)
        assert not torch.allclose(merged(input_ids=ids).logits, load_policy(tiny_policy)[0](input_ids=ids).logits)
