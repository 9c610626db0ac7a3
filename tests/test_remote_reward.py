"""The `--reward.remote_url` .py reward function, called through OpenRLHF's own SingleTurnAgentExecutor.

Only the vLLM engine is a stand-in (`FakeEngine`: vLLM cannot run here); the executor, its file loading, its
`asyncio.to_thread` calls, the tokenizer decode and our scorer are the real ones.
"""

import json

import pytest

from moslim_plugin.remote_reward import REWARD_FUNC_FILE, main, split_query

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
