"""Shared by the reward-path tests (test_remote_reward, test_server, test_launcher): a stand-in vLLM engine, OpenRLHF's
own executor driven over a batch of samples, and small MOSLIM checkpoints. Imported by name: pytest puts this folder
on sys.path (no tests/__init__.py on purpose, see conftest.py)."""

import asyncio
import contextlib
import json
import types

from moslim_plugin.core.directives import apply_directive, request_to_label
from moslim_plugin.core.spec import load_spec

# A learned objective beside two rules (the demo's length and format, exactly), as a user combining a format
# requirement with a learned helpfulness head writes it.
MIXED_SPEC = load_spec(
    {
        "objectives": [
            {k: v for k, v in load_spec("helpsteer").objectives[0].to_dict().items() if k != "rating"},
            {
                "name": "length",
                "levels": 3,
                "rule": {"name": "word_count", "bands": [20, 32]},
                "instructions": [
                    "Answer in at most twenty words.",
                    "Answer in 21 to 32 words.",
                    "Answer in more than 32 words.",
                ],
            },
            {
                "name": "format",
                "levels": 2,
                "rule": "bulleted_list",
                "instructions": ["Answer without a list.", "Answer as a bulleted list."],
            },
        ]
    }
)

RULES_SPEC = load_spec({"objectives": [o.to_dict() for o in MIXED_SPEC.objectives[1:]]})  # no reward model
# Samples for MIXED_SPEC / RULES_SPEC whose rule levels differ: 1 word, a 2-item list, 25 words, 40 words.
MIXED_RESPONSES = ["Four.", "Colours:\n- blue\n- red", " ".join(["word"] * 25), " ".join(["rain"] * 40)]
MIXED_REQUESTS = [{"helpfulness": 3, "length": 0}, {"format": 1}, {"length": 2, "format": 0}, {"length": 2}]
RULES_REQUESTS = [{"length": 0}, {"format": 1}, {"length": 2, "format": 0}, {"length": 2}]
# Their exact rewards under the default mapping (no calibration: per-sample z-scores of one-hot levels): a 3-level
# hit is sqrt(2), a 3-level miss -1/sqrt(2), a 2-level hit 1; sample 2 misses length (25 words) and hits format.
RULES_REWARDS = [2**0.5, 1.0, (1 - 2**-0.5) / 2, 2**0.5]
# Per sample, moslim/<objective>/hit as every path logs it (0 where not requested).
RULES_HITS = {"length": [1.0, 0.0, 0.0, 1.0], "format": [0.0, 1.0, 1.0, 0.0]}


def write_rules_spec(path):
    """RULES_SPEC as a YAML file: the whole reward of a rules-only run, passed as --reward.model_name_or_path."""
    import yaml

    path.write_text(yaml.safe_dump(RULES_SPEC.to_dict()))
    return path


QUESTIONS = ["What is 2+2?", "Name a colour.", "How do magnets work?", "Say hello."]
RESPONSES = ["4.", "Blue, the colour of the sky.", "Aligned electron spins make a field.", "Hello!"]
REQUESTS = [{"helpfulness": 3, "verbosity": 1}, {"harmlessness": 1}, {"verbosity": 4}, {"helpfulness": 0}]


class FakeVLLMEngine:
    """Stands in for OpenRLHF's vLLM engine actor (vLLM cannot run here): 'generates' a fixed response."""

    def __init__(self, tokenizer, response: str):
        self.token_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        output = types.SimpleNamespace(token_ids=self.token_ids, finish_reason="stop", logprobs=None)
        return types.SimpleNamespace(outputs=[output])


def chat_prompt(tokenizer, question, request, spec="helpsteer"):
    """The templated prompt OpenRLHF's PromptDataset builds for a conditioned row."""
    messages = apply_directive(load_spec(spec), request, question)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run_executor(
    executor, tokenizer, questions=QUESTIONS, responses=RESPONSES, requests=REQUESTS, labels=None, spec="helpsteer"
):
    """OpenRLHF's SingleTurnAgentExecutor.execute for every sample at once, as an engine actor runs them."""
    spec = load_spec(spec)
    labels = labels or [request_to_label(spec, request) for request in requests]

    async def one(question, response, request, label):
        params = types.SimpleNamespace(max_tokens=64, logprobs=None)  # vllm.SamplingParams' fields the executor reads
        engine = FakeVLLMEngine(tokenizer, response)
        prompt = chat_prompt(tokenizer, question, request, spec)
        return await executor.execute(prompt, label, params, 512, tokenizer, engine)

    async def all_samples():
        return await asyncio.gather(*map(one, questions, responses, requests, labels))

    return asyncio.run(all_samples())


def save_minilm_rm(path, minilm_dir, spec_name="helpsteer", seed=0):
    """A MOSLIM RM on the real MiniLM backbone (random heads: rewards only need to be the scorer's own); `spec_name`
    may be a spec itself (MIXED_SPEC: one head, two rules)."""
    import torch
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel

    torch.manual_seed(seed)
    model = MultiHeadRewardModel.from_backbone(minilm_dir, load_spec(spec_name))
    model.save_pretrained(path, tokenizer=AutoTokenizer.from_pretrained(minilm_dir))
    return path


def write_config_only_rm(path, spec_name="helpsteer", max_position_embeddings=512):
    """A checkpoint folder with only config.json, shaped as save_pretrained writes it (the backbone's config under
    backbone_config): enough for every check the driver makes (it never loads weights)."""
    spec = load_spec(spec_name)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": 2, "spec": spec.to_dict(), "spec_fingerprint": spec.fingerprint, "stats": None}
    backbone = {"model_type": "bert", "max_position_embeddings": max_position_embeddings}
    config = {"model_type": "moslim_multihead", "backbone_config": backbone, "moslim": meta}
    (path / "config.json").write_text(json.dumps(config))
    return path


def constant_mapping(probs, targets, levels, stats):
    """A mapping that ignores the probabilities: every reward 0."""
    import torch

    return torch.zeros(probs.shape[0]), torch.zeros(probs.shape[:2])


def inverted_mapping(probs, targets, levels, stats):
    """The paper's mapping with its sign turned: rewards the level that was not asked for."""
    from moslim_plugin.core.mappings import moslim

    rewards, terms = moslim(probs, targets, levels, stats)
    return -rewards, -terms


def flat_mapping(probs, targets, levels, stats):
    """A mapping that returns the wrong shape: one reward per (sample, objective), not per sample."""
    return probs[..., 0].flatten(), probs[..., 0]


@contextlib.contextmanager
def serving(engine, **app_kwargs):
    """A real uvicorn server for `engine` (serve-reward's app) on a free loopback port, in a thread; yields its URL."""
    import socket
    import threading
    import time

    import uvicorn

    from moslim_plugin.integration.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(engine, **app_kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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


def asks_back(question, response, min_questions=1):
    """A custom rule (`helpers_reward:asks_back`): level 1 when the response asks at least `min_questions`."""
    return int(response.count("?") >= min_questions)


def returns(question, response, value):
    """A custom rule that returns whatever it is told: a broken rule for the error tests."""
    return value
