"""The `--reward.remote_url` .py reward function, called through OpenRLHF's own SingleTurnAgentExecutor.

Only the vLLM engine is a stand-in (`FakeVLLMEngine`: vLLM cannot run here); the executor, its file loading, its
`asyncio.to_thread` calls, the tokenizer decode and our scorer are the real ones.
"""

import asyncio
import json
import logging
import types

import pytest

from moslim_plugin.integration.remote_reward import REWARD_FUNC_FILE, StrictRewardError, main, split_query

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
    with pytest.raises(ValueError, match="no known assistant marker"):
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


class FakeVLLMEngine:
    """Stands in for OpenRLHF's vLLM engine actor (vLLM cannot run here): 'generates' a fixed response."""

    def __init__(self, tokenizer, response: str):
        self.token_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        output = types.SimpleNamespace(token_ids=self.token_ids, finish_reason="stop", logprobs=None)
        return types.SimpleNamespace(outputs=[output])


@pytest.fixture(scope="module")
def rm_checkpoint(minilm_dir, tmp_path_factory):
    """A MOSLIM RM on the real MiniLM backbone (heads random: rewards only need to be the scorer's own)."""
    import torch
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel
    from moslim_plugin.core.spec import load_spec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("moslim-rm")
    model = MultiHeadRewardModel.from_backbone(minilm_dir, load_spec("helpsteer"))
    model.save_pretrained(path, tokenizer=AutoTokenizer.from_pretrained(minilm_dir))
    return path


QUESTIONS = ["What is 2+2?", "Name a colour.", "How do magnets work?", "Say hello."]
RESPONSES = ["4.", "Blue, the colour of the sky.", "Aligned electron spins make a field.", "Hello!"]
REQUESTS = [{"helpfulness": 3, "verbosity": 1}, {"harmlessness": 1}, {"verbosity": 4}, {"helpfulness": 0}]


def run_executor(executor, tokenizer, label_of=None):
    """OpenRLHF's SingleTurnAgentExecutor.execute for every sample at once, as an engine actor runs them."""
    from moslim_plugin.core.directives import apply_directive, request_to_label
    from moslim_plugin.core.spec import load_spec

    spec = load_spec("helpsteer")
    label_of = label_of or (lambda request: request_to_label(spec, request))

    async def one(question, response, request):
        prompt = tokenizer.apply_chat_template(
            apply_directive(spec, request, question), tokenize=False, add_generation_prompt=True
        )
        params = types.SimpleNamespace(max_tokens=64, logprobs=None)  # vllm.SamplingParams' fields the executor reads
        engine = FakeVLLMEngine(tokenizer, response)
        return await executor.execute(prompt, label_of(request), params, 512, tokenizer, engine)

    async def all_samples():
        return await asyncio.gather(*(one(q, r, t) for q, r, t in zip(QUESTIONS, RESPONSES, REQUESTS)))

    return asyncio.run(all_samples())


def load_reward_file(monkeypatch, rm_checkpoint, **env):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    monkeypatch.setenv("MOSLIM_RM_PATH", str(rm_checkpoint))
    monkeypatch.setenv("MOSLIM_MAX_WAIT_MS", "50")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # OpenRLHF's own loading: spec_from_file_location + exec_module of the remote_url, then `reward_func`.
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
    assert logs["moslim/helpfulness/p_target"] == pytest.approx(expected.probs[0, 0, 3].item(), abs=1e-4)
    assert logs["moslim/harmlessness/requested"] == 0.0  # not requested by sample 0
    assert [set(out["extra_logs"]) for out in outputs] == [set(logs)] * len(outputs)  # OpenRLHF stacks by key
    stats = executor.reward_func.__globals__["ENGINE"].stats
    assert stats["samples"] == len(QUESTIONS) and stats["forward_calls"] < len(QUESTIONS)


@pytest.mark.integration
def test_reward_file_gives_the_fallback_reward_counts_and_logs_an_unscorable_sample(
    monkeypatch, rm_checkpoint, smollm2_tokenizer, caplog
):
    executor = load_reward_file(monkeypatch, rm_checkpoint, MOSLIM_FALLBACK_REWARD="-2.5")
    labels = {0: None, 1: '{"moslim": {"targets": {"verbosity": 9}, "spec": "x"}}'}
    with caplog.at_level(logging.WARNING, logger="moslim_plugin.integration.remote_reward"):
        outputs = run_executor(executor, smollm2_tokenizer, label_of=lambda r: labels.get(REQUESTS.index(r), None))
    assert [out["reward"] for out in outputs] == [-2.5] * 4
    assert [out["extra_logs"]["moslim/errors"] for out in outputs] == [1.0] * 4
    assert executor.reward_func.__globals__["ENGINE"].stats["errors"] == 4
    assert "could not be computed" in caplog.text and "got None" in caplog.text and "fingerprint 'x'" in caplog.text


@pytest.mark.integration
def test_strict_reward_file_failure_escapes_openrlhfs_exception_swallowing(
    monkeypatch, rm_checkpoint, smollm2_tokenizer
):
    executor = load_reward_file(monkeypatch, rm_checkpoint, MOSLIM_STRICT="1")
    with pytest.raises(StrictRewardError, match="1 of 1 samples could not be scored"):
        run_executor(executor, smollm2_tokenizer, label_of=lambda r: "not json")


@pytest.mark.integration
def test_reward_file_refuses_to_load_without_a_checkpoint(monkeypatch, tmp_path):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    monkeypatch.setenv("MOSLIM_RM_PATH", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        SingleTurnAgentExecutor(str(REWARD_FUNC_FILE))
