"""The `--reward.remote_url` .py reward function, called through OpenRLHF's own SingleTurnAgentExecutor.

Only the vLLM engine is a stand-in (`FakeVLLMEngine`: vLLM cannot run here); the executor, its file loading, its
`asyncio.to_thread` calls, the tokenizer decode and our scorer are the real ones. Also: the one reward
configuration (`RewardConfig`), validated before anything loads, and what the engine does on bad input.
"""

import json
import logging
import os

import pytest
from helpers_reward import (
    MIXED_REQUESTS,
    MIXED_RESPONSES,
    MIXED_SPEC,
    QUESTIONS,
    REQUESTS,
    RESPONSES,
    RULES_HITS,
    RULES_REQUESTS,
    RULES_REWARDS,
    RULES_SPEC,
    chat_prompt,
    run_executor,
    save_minilm_rm,
    write_rules_spec,
)

from moslim_plugin import UserError
from moslim_plugin.core.directives import request_to_label
from moslim_plugin.core.spec import load_spec
from moslim_plugin.integration import reward_config
from moslim_plugin.integration.remote import REWARD_FUNC_FILE, main
from moslim_plugin.integration.reward_config import RewardConfig
from moslim_plugin.integration.reward_engine import RewardFailure, build_engine
from moslim_plugin.integration.templates import split_query

LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n[Preferences] verbosity: 1/4 (concise) "
    "[/Preferences]<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is a prime?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def chatml_sample(tokenizer, messages, response, keep_prompt_tokens=None):
    """(prompt, query) as OpenRLHF builds them: chat template, optional left truncation, decode with specials."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if keep_prompt_tokens is not None:
        prompt_ids = prompt_ids[-keep_prompt_tokens:]
    response_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt, tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.integration
def test_split_query_recovers_smollm2_chatml_question_and_response(smollm2_tokenizer):
    messages = [
        {"role": "system", "content": "[Preferences] verbosity: 1/4 (concise) [/Preferences]"},
        {"role": "user", "content": "Name a prime number, s'il vous plaît."},
    ]
    prompt, query = chatml_sample(smollm2_tokenizer, messages, "Seven is prime.")
    assert split_query(query, prompt) == ("Name a prime number, s'il vous plaît.", "Seven is prime.")
    assert split_query(query, prompt, "chatml") == split_query(query, prompt)


@pytest.mark.integration
def test_split_query_survives_openrlhf_left_truncation_of_a_multi_turn_prompt(smollm2_tokenizer):
    messages = [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Now say bye."},
    ]
    prompt, _ = chatml_sample(smollm2_tokenizer, messages, "Bye.")
    n_prompt = len(smollm2_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    for keep in range(6, n_prompt):  # cut everywhere, including inside the earlier assistant turn
        _, query = chatml_sample(smollm2_tokenizer, messages, "Bye.", keep_prompt_tokens=keep)
        assert split_query(query, prompt) == ("Now say bye.", "Bye."), keep


@pytest.mark.unit
def test_split_query_handles_llama3_template_and_stops_at_end_of_turn():
    query = LLAMA3_PROMPT + "2 is prime.<|eot_id|><|end_of_text|>"
    assert split_query(query, LLAMA3_PROMPT) == ("What is a prime?", "2 is prime.")
    truncated = LLAMA3_PROMPT[70:] + "2 is prime.<|eot_id|>"
    assert split_query(truncated, LLAMA3_PROMPT, "llama3") == ("What is a prime?", "2 is prime.")


@pytest.mark.unit
def test_split_query_is_not_fooled_by_a_response_that_echoes_the_assistant_marker():
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    response = "Hello <|im_start|>assistant\nagain"
    assert split_query(prompt + response + "<|im_end|>", prompt) == ("Hi", response)


@pytest.mark.unit
def test_split_query_accepts_a_custom_template_as_json():
    template = json.dumps({"assistant": "\nAssistant: ", "user": "Human: ", "end": ["</s>"]})
    prompt = "Human: Tell me a joke.\nAssistant: "
    assert split_query(prompt + "No.</s>", prompt, template) == ("Tell me a joke.", "No.")


@pytest.mark.unit
def test_split_query_names_what_is_missing():
    with pytest.raises(ValueError, match="no known assistant marker .*; set --moslim.template for this policy"):
        split_query("Human: hi\nAssistant: yo", "Human: hi\nAssistant: ")
    with pytest.raises(ValueError, match="does not contain the end of its prompt"):
        split_query("<|im_start|>user\nother<|im_end|>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="unknown chat template 'gemma'"):
        split_query("x", "y", "gemma")


@pytest.mark.unit
def test_reward_func_path_command_prints_the_shipped_file(capsys):
    assert main([]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(REWARD_FUNC_FILE) and printed.endswith(".py")
    assert "def reward_func(queries, prompts, labels)" in REWARD_FUNC_FILE.read_text()


@pytest.fixture(scope="module")
def rm_checkpoint(minilm_dir, tmp_path_factory):
    return save_minilm_rm(tmp_path_factory.mktemp("moslim-rm"), minilm_dir)


def load_reward_file(monkeypatch, rm_checkpoint, **config):
    """OpenRLHF's own loading of the reward file (spec_from_file_location + exec_module, then `reward_func`), with the
    configuration in the job's runtime env as the launcher puts it there."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    validated = RewardConfig(rm_path=str(rm_checkpoint), **config).validate()
    for key, value in validated.env_vars().items():
        monkeypatch.setenv(key, value)
    return SingleTurnAgentExecutor(str(REWARD_FUNC_FILE))


@pytest.mark.integration
def test_reward_file_loaded_by_openrlhf_gives_the_scorers_rewards_in_fewer_forward_passes(
    monkeypatch, rm_checkpoint, smollm2_tokenizer
):
    from moslim_plugin.core.scorer import Scorer

    executor = load_reward_file(monkeypatch, rm_checkpoint)
    outputs = run_executor(executor, smollm2_tokenizer)
    expected = Scorer.from_pretrained(rm_checkpoint).score(QUESTIONS, RESPONSES, REQUESTS)
    rewards = [out["reward"] for out in outputs]
    assert all(isinstance(r, float) for r in rewards)
    assert rewards == pytest.approx(expected.rewards.tolist(), abs=1e-4)
    logs = outputs[0]["extra_logs"]
    assert logs["moslim/errors"] == 0.0 and logs["moslim/helpfulness/requested"] == 1.0
    assert logs["moslim/truncated"] == 0.0
    assert logs["moslim/helpfulness/p_target"] == pytest.approx(expected.probs[0, 0, 3].item(), abs=1e-4)
    assert logs["moslim/harmlessness/requested"] == 0.0  # not requested by sample 0
    assert [set(out["extra_logs"]) for out in outputs] == [set(logs)] * len(outputs)  # OpenRLHF stacks by key
    stats = executor.reward_func.__globals__["ENGINE"].stats
    assert stats["samples"] == len(QUESTIONS) and stats["forward_calls"] < len(QUESTIONS)


@pytest.fixture(scope="module")
def rule_sources(minilm_dir, tmp_path_factory):
    """(reward model path, spec, requests): a checkpoint with one head beside two rules, and a rules-only spec file."""
    root = tmp_path_factory.mktemp("rule-rewards")
    return {
        "mixed": (save_minilm_rm(root / "mixed", minilm_dir, MIXED_SPEC), MIXED_SPEC, MIXED_REQUESTS),
        "rules only": (write_rules_spec(root / "rules.yaml"), RULES_SPEC, RULES_REQUESTS),
    }


@pytest.mark.integration
@pytest.mark.parametrize("source", ["mixed", "rules only"])
def test_the_reward_file_scores_rule_objectives_exactly_beside_learned_ones(
    monkeypatch, rule_sources, smollm2_tokenizer, source
):
    from moslim_plugin.core.scorer import Scorer

    path, spec, requests = rule_sources[source]
    executor = load_reward_file(monkeypatch, path, strict=True)
    outputs = run_executor(executor, smollm2_tokenizer, QUESTIONS, MIXED_RESPONSES, requests, spec=spec)
    expected = Scorer.from_pretrained(path).score(QUESTIONS, MIXED_RESPONSES, requests)
    assert [out["reward"] for out in outputs] == pytest.approx(expected.rewards.tolist(), abs=1e-4)
    for name, hits in RULES_HITS.items():  # logged like a learned head's: the exact hit where requested
        assert [out["extra_logs"][f"moslim/{name}/hit"] for out in outputs] == hits
    assert {key for key in outputs[0]["extra_logs"] if key.startswith("moslim/length/")} == {
        f"moslim/length/{d}" for d in ("p_target", "hit", "term", "requested")
    }
    if source == "rules only":  # no model anywhere: the exact rewards themselves
        assert [out["reward"] for out in outputs] == pytest.approx(RULES_REWARDS, abs=1e-6)
        assert executor.reward_func.__globals__["ENGINE"].scorer.model is None


@pytest.mark.integration
def test_reward_file_gives_each_unscorable_sample_the_fallback_reward_with_its_reason(
    monkeypatch, rm_checkpoint, smollm2_tokenizer, caplog
):
    executor = load_reward_file(monkeypatch, rm_checkpoint, fallback_reward=-2.5, max_error_share=0.5)
    labels = [None, '{"moslim": {"targets": {"verbosity": 9}, "spec": "x"}}', None, None]
    with caplog.at_level(logging.WARNING, logger="moslim_plugin.integration.reward_engine"):
        outputs = run_executor(executor, smollm2_tokenizer, labels=labels)
    assert [out["reward"] for out in outputs] == [-2.5] * 4
    assert [out["extra_logs"]["moslim/errors"] for out in outputs] == [1.0] * 4
    assert executor.reward_func.__globals__["ENGINE"].stats["errors"] == 4  # 4 of the window of 64: under 50%
    assert "could not be computed" in caplog.text and "got None" in caplog.text and "fingerprint 'x'" in caplog.text
    # The reply itself carries the reason (OpenRLHF keeps only rewards/scores/extra_logs; the log line has it too).
    prompt = chat_prompt(smollm2_tokenizer, QUESTIONS[0], REQUESTS[0])
    reply = executor.reward_func([prompt + "4."], [prompt], ["not json"])
    assert reply["rewards"] == -2.5 and "label is not MOSLIM JSON" in reply["reasons"][0]


@pytest.mark.integration
def test_reward_file_stops_openrlhf_when_too_many_samples_fail(monkeypatch, rm_checkpoint, smollm2_tokenizer):
    # 4 failures in a window of 4 is over the 50% share: RewardFailure passes through OpenRLHF's `except Exception`.
    executor = load_reward_file(monkeypatch, rm_checkpoint, max_error_share=0.5, error_window=4)
    with pytest.raises(RewardFailure, match=r"\d+% of the last 4 samples failed.*label is not MOSLIM JSON"):
        run_executor(executor, smollm2_tokenizer, labels=["not json"] * 4)


@pytest.mark.integration
def test_an_overloaded_reward_file_stops_openrlhf_with_the_reason_instead_of_a_missing_reward(
    monkeypatch, rm_checkpoint, smollm2_tokenizer
):
    executor = load_reward_file(monkeypatch, rm_checkpoint)
    executor.reward_func.__globals__["ENGINE"].max_queued_samples = 0  # every request is over the queue bound
    prompt = chat_prompt(smollm2_tokenizer, QUESTIONS[0], REQUESTS[0])
    with pytest.raises(RewardFailure, match="overloaded: reward queue full"):
        executor.reward_func([prompt + "4."], [prompt], [request_to_label(load_spec("helpsteer"), REQUESTS[0])])


@pytest.mark.integration
def test_strict_reward_file_failure_escapes_openrlhfs_exception_swallowing(
    monkeypatch, rm_checkpoint, smollm2_tokenizer
):
    executor = load_reward_file(monkeypatch, rm_checkpoint, strict=True)
    with pytest.raises(RewardFailure, match="strict mode; 1 of 1 samples"):
        run_executor(executor, smollm2_tokenizer, labels=["not json"] * 4)


@pytest.mark.unit
def test_the_reward_configuration_is_read_from_the_environment_of_the_moment(monkeypatch):
    # Libraries replace the os.environ object (OpenRLHF's reward-model trainer does): what is read is the current one.
    monkeypatch.setattr(os, "environ", {reward_config.ENV_VAR: json.dumps({"rm_path": "elsewhere"})})
    assert reward_config.from_env().rm_path == "elsewhere"


@pytest.mark.unit
def test_reward_file_refuses_to_load_without_the_launchers_configuration():
    with pytest.raises(UserError, match="MOSLIM_REWARD_CONFIG is not set: start training with `moslim-openrlhf"):
        reward_config.from_env({})


@pytest.mark.integration
def test_reward_file_refuses_a_configured_checkpoint_that_is_missing(monkeypatch, tmp_path):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    monkeypatch.setenv(reward_config.ENV_VAR, json.dumps({"rm_path": str(tmp_path / "missing")}))
    with pytest.raises(UserError, match="checkpoint not found: .*missing"):
        SingleTurnAgentExecutor(str(REWARD_FUNC_FILE))


@pytest.mark.unit
@pytest.mark.parametrize(
    "config, message",
    [
        ({"mapping_kwargs": {"norm": "dataset "}}, "mapping keyword 'norm' must be one of .* got 'dataset '"),
        ({"mapping_kwargs": {"eps": -1}}, r"mapping keyword 'eps' must be a number in \(0, inf\), got -1"),
        ({"mapping_kwargs": {"epsilon": 1}}, r"has no keyword\(s\) \['epsilon'\]"),
        ({"mapping_kwargs": {"norm": "dataset"}}, "needs a MappingStats"),  # the checkpoint has no statistics
        ({"mapping": "no_such_mapping"}, "unknown mapping 'no_such_mapping'"),
        ({"mapping": "helpers_reward:constant_mapping"}, r"gets helpfulness \+0, .* less than the floor of 0.001"),
        ({"mapping": "helpers_reward:inverted_mapping"}, r"gets helpfulness -4, .* or the opposite"),
        ({"mapping_kwargs": {"eps": 1e9}}, r"gets helpfulness \+8e-10.*the keyword\(s\) \['eps'\] cause it"),
        ({"mapping": "target_logprob", "mapping_kwargs": {"min_prob": 0.95, "k": "all"}}, r"\['min_prob'\] cause it"),
        ({"mapping": "helpers_reward:flat_mapping"}, r"rewards of shape torch.Size\(\[18\]\) .* expected \(6,\)"),
        ({"max_length": 0}, "--moslim.max_length 0: expected an integer >= 8"),
        ({"max_length": 4096}, r"exceeds what the reward model .* \(its backbone's max_position_embeddings 512\)"),
        ({"fallback_reward": float("nan")}, "--moslim.fallback_reward nan: expected a finite number"),
        ({"max_error_share": 1.5}, r"--moslim.max_error_share 1.5: expected a number in \[0, 1\)"),
        ({"template": "gemma"}, "unknown chat template 'gemma'"),
    ],
)
def test_a_reward_configuration_that_would_make_every_reward_fail_or_constant_is_refused_before_loading(
    tmp_path, config, message
):
    from helpers_reward import write_config_only_rm

    rm = write_config_only_rm(tmp_path / "rm")
    with pytest.raises(UserError, match=message):
        RewardConfig(rm_path=str(rm), **config).validate()


@pytest.mark.unit
def test_a_reward_model_trained_for_another_spec_is_refused_naming_both_fingerprints(tmp_path):
    from helpers_reward import write_config_only_rm

    rm = write_config_only_rm(tmp_path / "rm", "helpsteer")
    hh, helpsteer = load_spec("hh"), load_spec("helpsteer")
    with pytest.raises(UserError, match=f"{hh.fingerprint}.*{helpsteer.fingerprint}"):
        RewardConfig(rm_path=str(rm)).validate(spec=hh)
    assert RewardConfig(rm_path=str(rm)).validate(spec=helpsteer).spec_fingerprint == helpsteer.fingerprint


@pytest.fixture(scope="module")
def engine_of(rm_checkpoint):
    def make(**config):
        return build_engine(RewardConfig(rm_path=str(rm_checkpoint), **config), max_wait_ms=1)

    return make


def sample(tokenizer, question, response, label, request=None):
    prompt = chat_prompt(tokenizer, question, request or {"helpfulness": 3})
    return prompt + response + tokenizer.eos_token, prompt, label


@pytest.mark.integration
def test_an_empty_or_disagreeing_label_is_an_error_with_its_reason_never_a_constant_reward(
    engine_of, smollm2_tokenizer
):
    spec = load_spec("helpsteer")
    engine = engine_of(max_error_share=0.9)
    samples = [
        sample(smollm2_tokenizer, "Hi?", "Hello.", request_to_label(spec, {})),  # targets {}
        sample(smollm2_tokenizer, "Hi?", "Hello.", request_to_label(spec, {"helpfulness": 1})),  # prompt says 3
        sample(smollm2_tokenizer, "Hi?", "Hello.", request_to_label(spec, {"helpfulness": 3})),
    ]
    no_directive = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True
    )
    samples.append((no_directive + "Hello.", no_directive, request_to_label(spec, {"helpfulness": 3})))
    reply = engine(*map(list, zip(*samples)))
    assert reply["extra_logs"]["moslim/errors"] == [1.0, 1.0, 0.0, 1.0]
    assert "requests no objective (targets {})" in reply["reasons"][0]
    assert (
        "label requests {'helpfulness': 1} but the prompt's directive requests {'helpfulness': 3}"
        in (reply["reasons"][1])
    )
    assert reply["reasons"][2] is None and "prompt has no valid directive" in reply["reasons"][3]
    with pytest.raises(ValueError, match="empty request"):
        engine([], [], [])


@pytest.mark.integration
def test_a_response_longer_than_max_length_is_scored_truncated_and_counted(engine_of, smollm2_tokenizer):
    spec = load_spec("helpsteer")
    engine = engine_of(max_length=32, strict=True)
    label = request_to_label(spec, {"helpfulness": 3})
    long_response = "This answer keeps going " * 40
    reply = engine(*map(list, zip(sample(smollm2_tokenizer, "Hi?", long_response, label))))
    assert reply["reasons"] == [None] and reply["extra_logs"]["moslim/truncated"] == [1.0]
    assert engine.stats["truncated"] == 1 and engine.stats["errors"] == 0


@pytest.fixture(scope="module")
def trained_rm(tiny_bert, tmp_path_factory):
    """A checkpoint written by `train-rm` itself on the tiny BERT backbone (max_position_embeddings 128)."""
    from moslim_plugin.cli import main as cli

    d = tmp_path_factory.mktemp("trained-rm")
    rows = [{"question": f"q{i}", "response": "sure" if i % 2 else "no", "labels": {"helpful": i % 2, "harmless": 1}}
            for i in range(16)]  # fmt: skip
    (d / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["train-rm", "--model.model_name_or_path", str(tiny_bert), "--moslim.spec", "hh", "--data.max_len", "32"]
    argv += ["--data.dataset", str(d / "rows.jsonl"), "--ckpt.output_dir", str(d / "rm"), "--ckpt.path", str(d)]
    argv += ["--train.batch_size", "4", "--train.micro_batch_size", "4", "--train.max_steps", "1"]
    assert cli(argv + ["--moslim.eval_ratio", "0.25"]) == 0
    return d / "rm"


@pytest.mark.integration
def test_the_length_limit_is_checked_against_the_backbone_inside_a_train_rm_checkpoint_on_every_reward_path(
    trained_rm, monkeypatch, capsys
):
    import socket
    from types import SimpleNamespace as NS

    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from moslim_plugin.cli import main as cli
    from moslim_plugin.integration import launcher

    config = json.loads((trained_rm / "config.json").read_text())
    assert "max_position_embeddings" not in config and config["backbone_config"]["max_position_embeddings"] == 128
    message = f"--moslim.max_length 200 exceeds what the reward model {trained_rm} can read .* pass at most 128"

    # train_ppo_ray's validation, in-process and with the .py reward function
    for remote in (None, str(REWARD_FUNC_FILE)):
        args = NS(data=NS(apply_chat_template=True, label_key="label", max_len=64), train=NS(agent_func_path=None),
                  reward=NS(model_name_or_path=str(trained_rm), remote_url=remote), rollout=NS(max_new_tokens=32),
                  algo=NS(advantage=NS(estimator="rloo")), critic=NS(model_name_or_path=None))  # fmt: skip
        with pytest.raises(UserError, match=message):
            launcher.check_moslim_args(launcher.split_argv(["--moslim.max_length", "200"])[0], args)
    # serve-reward: one line at start-up, before the model loads
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    argv = ["serve-reward", "--reward.model_name_or_path", str(trained_rm), "--moslim.max_length", "200"]
    assert cli(argv + ["--server.port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "pass at most 128" in err
    # the .py function, given a configuration no launcher has validated
    unchecked = RewardConfig(rm_path=str(trained_rm), max_length=200)
    monkeypatch.setenv(reward_config.ENV_VAR, json.dumps(unchecked.to_dict()))
    with pytest.raises(UserError, match=message):
        SingleTurnAgentExecutor(str(REWARD_FUNC_FILE))

    # At the limit a long pair is scored truncated; past it, the backbone itself fails (what the check prevents).
    engine = build_engine(RewardConfig(rm_path=str(trained_rm), max_length=128, device="cpu"))
    long_pair = (["why " * 300], ["because " * 300], [{"helpful": 1}])
    result = engine.scorer.score(*long_pair)
    assert result.truncated.tolist() == [True] and result.rewards.isfinite().all()
    engine.scorer.max_length = 200
    with pytest.raises(IndexError):
        engine.scorer.score(*long_pair)
    # The Scorer loaded on its own (evaluate, screen, the demo's judge) reads as far as the backbone can.
    from moslim_plugin.core.scorer import Scorer

    assert Scorer.from_pretrained(trained_rm).max_length == 128
    with pytest.raises(UserError, match="max_length 200 exceeds what the reward model .* max_position_embeddings 128"):
        Scorer.from_pretrained(trained_rm, max_length=200)
