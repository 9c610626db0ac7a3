"""The local RL driver: OpenRLHF's Actor / PolicyLoss / KL / advantage code on one process with HF generate.

A tiny random-init Llama (SmolLM2's real tokenizer and chat template) keeps these tests fast: what is checked is the
driver's plumbing and OpenRLHF's algorithm code on real Experience objects, not what the weights know.
"""

import json
import math

import pytest
import torch

from moslim_plugin import UserError
from moslim_plugin.demo.local_rl import (
    ESTIMATORS,
    make_experience,
    parse_rl_args,
    rollout_step,
    setup_run,
    train_policy,
    update_step,
)
from moslim_plugin.demo.oracle import judge, request_hits
from moslim_plugin.demo.policy import load_policy


def logprob_of(policy, tokenizer, chat, text) -> float:
    """log p(text | chat) under `policy`: the chat templated with its generation prompt, the text's tokens scored."""
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    r_ids = tokenizer(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = policy(torch.tensor([p_ids + r_ids])).logits[0, len(p_ids) - 1 : -1]
    return float(logits.log_softmax(-1).gather(-1, torch.tensor(r_ids)[:, None]).sum())


def rows(n=4):
    questions = ["Name a fruit.", "Say hi.", "Count to three.", "Name a color."][:n]
    request = {"length": 0}
    return [{"question": q, "request": request, "messages": [{"role": "user", "content": q}]} for q in questions]


def oracle_reward(questions, responses, requests):
    return torch.tensor([request_hits(judge(r), q) for r, q in zip(responses, requests)]), {}


@pytest.mark.unit
def test_make_experience_left_pads_prompts_and_masks_only_response_tokens():
    exp = make_experience([[5, 6, 7], [8]], [[1, 2, 0], [3]], pad_id=0, eos_id=0)
    assert exp.sequences.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 0, 0]]
    assert exp.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]]
    assert exp.action_mask.tolist() == [[True, True, True], [True, False, False]]
    assert exp.truncated.tolist() == [False, True]  # the second response never produced eos


@pytest.mark.unit
def test_group_estimators_need_several_samples_per_prompt_as_in_openrlhf():
    with pytest.raises(ValueError, match="rloo requires --rollout.n_samples_per_prompt > 1"):
        parse_rl_args(["--algo.advantage.estimator", "rloo", "--rollout.n_samples_per_prompt", "1"])
    with pytest.raises(SystemExit):  # an unknown estimator is refused by argparse, naming the choices
        parse_rl_args(["--algo.advantage.estimator", "ppo_magic"])


@pytest.mark.integration
@pytest.mark.parametrize("estimator", ["reinforce_baseline", "rloo", "group_norm"])
def test_rl_step_trains_only_the_top_layers_and_logs_finite_numbers(tiny_policy, tmp_path, estimator):
    args = parse_rl_args([
        "--actor.model_name_or_path", str(tiny_policy), "--algo.advantage.estimator", estimator,
        "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2", "--rollout.max_new_tokens", "6",
        "--moslim.trainable_layers", "1", "--actor.adam.lr", "1e-2", "--algo.kl.init_coef", "0.05",
        "--ckpt.output_dir", str(tmp_path / "out"), "--train.num_episodes", "1",
    ])  # fmt: skip
    model, tokenizer = load_policy(tiny_policy, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # Different rewards inside each prompt group, so every estimator gives non-zero advantages.
    def reward_fn(questions, responses, requests):
        return torch.arange(len(responses), dtype=torch.float32) % 2, {"custom": torch.ones(len(responses))}

    result = train_policy(args, rows(4), reward_fn, model=model, tokenizer=tokenizer, progress=False)
    after = model.state_dict()
    assert len(result["history"]) == 2  # 4 prompts / 2 per rollout
    assert torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert not torch.equal(before["model.layers.2.mlp.up_proj.weight"], after["model.layers.2.mlp.up_proj.weight"])
    for log in result["history"]:
        assert {"reward", "kl", "policy_loss", "grad_norm", "custom", "return"} <= set(log)
        assert all(math.isfinite(v) for v in log.values() if isinstance(v, float))
    assert result["history"][1]["kl"] != 0.0  # the policy moved away from the reference after step 1
    saved = json.loads((tmp_path / "out" / "rl_history.json").read_text())
    assert saved == result["history"]
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.integration
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_rollouts_come_from_a_bf16_copy_that_takes_the_trained_weights_after_each_update(tiny_policy, lora_rank):
    args = parse_rl_args([
        "--actor.model_name_or_path", str(tiny_policy), "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt",
        "2", "--rollout.max_new_tokens", "6", "--moslim.trainable_layers", "1", "--actor.adam.lr", "1e-2",
        "--ds.lora.rank", str(lora_rank),
    ])  # fmt: skip
    model, tokenizer = load_policy(tiny_policy, 1, lora=args.ds.lora)

    def reward_fn(questions, responses, requests):
        return torch.arange(len(responses), dtype=torch.float32) % 2, {}

    run = setup_run(args, model, tokenizer, reward_fn)
    assert {p.dtype for p in run.rollout_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the trained policy stays fp32
    batch = [row for row in rows(2) for _ in range(2)]
    experiences, graphs, logs = rollout_step(run, batch, 0)
    assert logs["response_length"] > 0
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.clone() for name, p in run.rollout_model.named_parameters()}
    update_step(run, experiences, graphs)
    after = dict(run.rollout_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(after[name], p.detach().to(torch.bfloat16)), name
    # The update reached the copy (a stale copy would equal `before`), and only through the trained parameters.
    assert {name for name in after if not torch.equal(before[name], after[name])} <= trained
    assert any(not torch.equal(before[name], after[name]) for name in trained)


@pytest.mark.integration
def test_non_finite_reward_stops_training_before_any_update(tiny_policy, tmp_path):
    args = parse_rl_args(["--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2",
                          "--rollout.max_new_tokens", "4", "--algo.kl.init_coef", "0",
                          "--ckpt.output_dir", str(tmp_path)])  # fmt: skip
    model, tokenizer = load_policy(tiny_policy, 1)

    def nan_reward(questions, responses, requests):
        return torch.full((len(responses),), float("nan")), {}

    with pytest.raises(ValueError, match="finite rewards"):
        train_policy(args, rows(2), nan_reward, model=model, tokenizer=tokenizer, progress=False)


@pytest.mark.integration
def test_oracle_reward_runs_through_the_driver(tiny_policy, tmp_path):
    args = parse_rl_args(["--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2",
                          "--rollout.max_new_tokens", "4", "--algo.kl.init_coef", "0",
                          "--ckpt.output_dir", str(tmp_path)])  # fmt: skip
    model, tokenizer = load_policy(tiny_policy, 1)
    result = train_policy(args, rows(2), oracle_reward, model=model, tokenizer=tokenizer, progress=False)
    # Four tokens hold at most one complete sentence: the oracle says every sample hit "one sentence".
    assert result["history"][0]["reward"] == 1.0


@pytest.mark.integration
def test_experience_maker_import_leaves_no_vllm_stand_in_behind():
    import importlib.util
    import sys

    from moslim_plugin.demo.local_rl import import_experience_maker

    maker = import_experience_maker()
    assert maker.__module__ == "openrlhf.trainer.ppo_utils.experience_maker"
    assert hasattr(maker, "compute_advantages_and_returns")
    if importlib.util.find_spec("vllm") is None:  # no real vLLM on CPU machines
        stand_in = sys.modules.get("vllm")
        assert stand_in is None or "moslim-local-shim" not in getattr(stand_in, "__version__", "")


@pytest.mark.integration
def test_an_rl_step_makes_rewarded_responses_more_likely_and_the_others_less(tiny_policy, tmp_path):
    # Guards the direction of the whole chain (advantage sign, baseline, loss, optimizer): after one step, the
    # response rewarded in each group of 4 gained log-probability and its unrewarded siblings lost some.
    args = parse_rl_args(["--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "4",
                          "--rollout.max_new_tokens", "4", "--algo.kl.init_coef", "0", "--actor.adam.lr", "1e-3",
                          "--moslim.trainable_layers", "-1", "--ckpt.output_dir", str(tmp_path)])  # fmt: skip
    model, tokenizer = load_policy(tiny_policy, -1)
    seen = []

    def first_of_each_group_wins(questions, texts, requests):
        seen.extend(texts)
        return torch.tensor([float(i % 4 == 0) for i in range(len(texts))]), {}

    def response_logprobs(policy):
        chats = [r["messages"] for r in rows() for _ in range(4)]
        return torch.tensor([logprob_of(policy, tokenizer, chat, text) for chat, text in zip(chats, seen)])

    initial, _ = load_policy(tiny_policy, -1)
    train_policy(args, rows(), first_of_each_group_wins, model=model, tokenizer=tokenizer, progress=False)
    delta = response_logprobs(model) - response_logprobs(initial)
    winners = torch.tensor([i % 4 == 0 for i in range(len(seen))])
    assert delta[winners].mean() > 0 > delta[~winners].mean(), delta


@pytest.mark.unit
def test_bad_batch_flags_are_refused_with_the_value_named():
    with pytest.raises(UserError, match="--train.batch_size 10 must be a multiple of --train.micro_batch_size 4"):
        parse_rl_args(["--train.batch_size", "10", "--train.micro_batch_size", "4"])
    with pytest.raises(SystemExit):  # argparse: "argument --train.max_epochs: expected an integer >= 1, got 0"
        parse_rl_args(["--train.max_epochs", "0"])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_ppo_epochs_over_minibatches_run_with_every_estimator_and_the_kl_loss(tiny_policy, tmp_path, estimator):
    args = parse_rl_args([
        "--algo.advantage.estimator", estimator, "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2",
        "--rollout.max_new_tokens", "4", "--train.max_epochs", "2", "--train.batch_size", "2",
        "--train.micro_batch_size", "1", "--algo.kl.init_coef", "0.05", "--algo.kl.use_loss",
        "--ckpt.output_dir", str(tmp_path),
    ])  # fmt: skip
    model, tokenizer = load_policy(tiny_policy, 1)
    result = train_policy(args, rows(2), oracle_reward, model=model, tokenizer=tokenizer, progress=False)
    log = result["history"][0]
    assert log["optimizer_steps"] == 2 * 2  # 4 samples / 2 per step, 2 epochs
    assert all(math.isfinite(v) for v in log.values() if isinstance(v, float))


@pytest.mark.gpu
def test_device_cuda_trains_an_fp32_policy_with_tf32_matmuls_on_the_gpu(tiny_policy, tmp_path):
    args = parse_rl_args(["--device", "cuda", "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2",
                          "--rollout.max_new_tokens", "4", "--ckpt.output_dir", str(tmp_path)])  # fmt: skip
    model, tokenizer = load_policy(tiny_policy, 1)
    result = train_policy(args, rows(2), oracle_reward, model=model, tokenizer=tokenizer, progress=False)
    param = next(model.parameters())
    assert param.device.type == "cuda" and param.dtype == torch.float32
    assert torch.get_float32_matmul_precision() == "high"  # TF32
    assert all(math.isfinite(v) for v in result["history"][0].values() if isinstance(v, float))
