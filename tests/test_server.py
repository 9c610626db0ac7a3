"""`moslim-openrlhf serve-reward`: a real uvicorn server on 127.0.0.1, called through OpenRLHF's own HTTP client.

Only the vLLM engine is a stand-in (`FakeVLLMEngine`: vLLM cannot run here); the executor and its aiohttp client,
the server, the batching engine and the scorer are the real ones.
"""

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import types
import urllib.error
import urllib.request

import pytest

from moslim_plugin.integration.remote_reward import RewardEngine
from moslim_plugin.integration.server import build_parser, create_app

QUESTIONS = ["What is 2+2?", "Name a colour.", "How do magnets work?", "Say hello."] * 4
RESPONSES = ["4.", "Blue, like the sky.", "Aligned electron spins make a field.", "Hello!"] * 4
REQUESTS = [{"helpfulness": 3, "verbosity": 1}, {"harmlessness": 1}, {"verbosity": 4}, {"helpfulness": 0}] * 4


class FakeVLLMEngine:
    """Stands in for OpenRLHF's vLLM engine actor (vLLM cannot run here): 'generates' a fixed response."""

    def __init__(self, tokenizer, response: str):
        self.token_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        output = types.SimpleNamespace(token_ids=self.token_ids, finish_reason="stop", logprobs=None)
        return types.SimpleNamespace(outputs=[output])


@pytest.fixture(scope="module")
def scorer(minilm_dir):
    """The real MiniLM backbone with random heads: the server's rewards only need to be the scorer's own."""
    import torch
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.core.spec import load_spec

    torch.manual_seed(0)
    model = MultiHeadRewardModel.from_backbone(minilm_dir, load_spec("helpsteer"))
    return Scorer(model, AutoTokenizer.from_pretrained(minilm_dir))


@pytest.fixture(scope="module")
def policy_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@contextlib.contextmanager
def serving(engine):
    """A real uvicorn server for `engine` on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post(url, body) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def openrlhf_rollouts(url, tokenizer, labels=None):
    """OpenRLHF's SingleTurnAgentExecutor.execute for every sample at once, as an engine actor runs them."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from moslim_plugin.core.directives import apply_directive, request_to_label
    from moslim_plugin.core.spec import load_spec

    spec = load_spec("helpsteer")
    executor = SingleTurnAgentExecutor(url)
    labels = labels or [request_to_label(spec, request) for request in REQUESTS]

    async def one(question, response, request, label):
        messages = apply_directive(spec, request, question)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        params = types.SimpleNamespace(max_tokens=64, logprobs=None)  # vllm.SamplingParams' fields the executor reads
        return await executor.execute(prompt, label, params, 512, tokenizer, FakeVLLMEngine(tokenizer, response))

    async def all_samples():
        return await asyncio.gather(*map(one, QUESTIONS, RESPONSES, REQUESTS, labels))

    return asyncio.run(all_samples())


@pytest.mark.integration
def test_server_answers_openrlhfs_client_with_the_scorers_rewards_batching_concurrent_requests(
    scorer, policy_tokenizer
):
    engine = RewardEngine(scorer, max_batch_size=64, max_wait_ms=50)
    with serving(engine) as base:
        outputs = openrlhf_rollouts(base + "/get_reward", policy_tokenizer)
        stats = get_json(base + "/stats")
    expected = scorer.score(QUESTIONS, RESPONSES, REQUESTS)
    # OpenRLHF keeps the server's 1-element lists as they are (as with its own serve_rm).
    assert [out["reward"][0] for out in outputs] == pytest.approx(expected.rewards.tolist(), abs=1e-4)
    assert [out["scores"] for out in outputs] == [out["reward"] for out in outputs]
    logs = outputs[0]["extra_logs"]
    assert logs["moslim/errors"] == [0.0] and logs["moslim/verbosity/requested"] == [1.0]
    assert logs["moslim/verbosity/p_target"][0] == pytest.approx(expected.probs[0, 1, 1].item(), abs=1e-4)
    assert stats["requests"] == len(QUESTIONS) and stats["samples"] == len(QUESTIONS)
    assert stats["forward_calls"] < len(QUESTIONS) // 2, stats  # 16 concurrent single-sample requests, few forwards


@pytest.mark.integration
def test_non_strict_server_gives_the_fallback_reward_and_counts_and_logs_each_failure(scorer, caplog):
    engine = RewardEngine(scorer, fallback_reward=-1.5)
    body = {"query": ["<|im_start|>assistant\nhi"], "prompts": ["<|im_start|>assistant\n"], "labels": ["{}"]}
    with serving(engine) as base, caplog.at_level(logging.WARNING, logger="moslim_plugin.integration.remote_reward"):
        status, reply = post(base + "/get_reward", body)
        stats = get_json(base + "/stats")
    assert status == 200 and reply["rewards"] == [-1.5] and reply["extra_logs"]["moslim/errors"] == [1.0]
    assert stats["errors"] == 1 and stats["forward_calls"] == 0
    assert "could not be computed" in caplog.text and "expected a label" in caplog.text


@pytest.mark.integration
def test_strict_server_answers_http_500_naming_the_reason(scorer, policy_tokenizer):
    engine = RewardEngine(scorer, strict=True)
    body = {"query": ["no template here"], "prompts": ["no template here"], "labels": [None]}
    with serving(engine) as base:
        status, reply = post(base + "/get_reward", body)
        status2, reply2 = post(base + "/get_reward", {**body, "labels": ['{"moslim": 1}']})
    assert status == 500 and "strict mode: 1 of 1 samples could not be scored" in reply["error"]
    assert "got None" in reply["error"]
    assert status2 == 500 and "expected a label" in reply2["error"]


@pytest.mark.integration
def test_server_rejects_a_request_without_openrlhfs_fields(scorer):
    with serving(RewardEngine(scorer)) as base:
        status, reply = post(base + "/get_reward", {"query": ["x"]})
        health = get_json(base + "/health")
    assert status == 400 and "'prompts'" in reply["error"] and "'labels'" in reply["error"]
    assert health["objectives"] == ["helpfulness", "verbosity", "harmlessness"]


@pytest.mark.unit
def test_serve_reward_binds_loopback_by_default():
    args = build_parser().parse_args(["--reward.model_name_or_path", "rm", "--strict"])
    assert args.host == "127.0.0.1" and args.strict and args.fallback_reward == 0.0
