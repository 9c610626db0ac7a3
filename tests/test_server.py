"""`moslim-openrlhf serve-reward`: a real uvicorn server on 127.0.0.1, called through OpenRLHF's own HTTP client.

Only the vLLM engine is a stand-in (`FakeVLLMEngine`: vLLM cannot run here); the executor and its aiohttp client,
the server, the batching engine and the scorer are the real ones. Also the server's bounds (body size, samples per
request, queue, deadline), its fair scheduling of large requests, and the driver's check of its configuration.
"""

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace as NS

import pytest
from helpers_reward import (
    MIXED_REQUESTS,
    MIXED_RESPONSES,
    MIXED_SPEC,
    RULES_HITS,
    RULES_REQUESTS,
    RULES_REWARDS,
    RULES_SPEC,
    chat_prompt,
    run_executor,
    save_minilm_rm,
    serving,
    write_rules_spec,
)

from moslim_plugin import UserError
from moslim_plugin.core.directives import request_to_label
from moslim_plugin.core.spec import load_spec
from moslim_plugin.integration import launcher
from moslim_plugin.integration.reward_config import RewardConfig
from moslim_plugin.integration.reward_engine import DeadlineExceeded, QueueFull, build_engine
from moslim_plugin.integration.server import build_parser

QUESTIONS = ["What is 2+2?", "Name a colour.", "How do magnets work?", "Say hello."] * 4
RESPONSES = ["4.", "Blue, like the sky.", "Aligned electron spins make a field.", "Hello!"] * 4
REQUESTS = [{"helpfulness": 3, "verbosity": 1}, {"harmlessness": 1}, {"verbosity": 4}, {"helpfulness": 0}] * 4


@pytest.fixture(scope="module")
def rm_checkpoint(minilm_dir, tmp_path_factory):
    return save_minilm_rm(tmp_path_factory.mktemp("moslim-rm"), minilm_dir)


@pytest.fixture(scope="module")
def engine_of(rm_checkpoint):
    """A fresh engine (own queue and counters) over the real MiniLM RM; the scorer is loaded once per engine."""

    def make(config=None, **engine_kwargs):
        return build_engine(RewardConfig(rm_path=str(rm_checkpoint), **(config or {})), **engine_kwargs)

    return make


@pytest.fixture(scope="module")
def policy_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def get_json(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
        return json.loads(response.read())


def get(url, headers=None) -> tuple[int, dict]:
    try:
        return 200, get_json(url, headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url, body, method="POST") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def valid_body(tokenizer, n=1):
    spec = load_spec("helpsteer")
    prompts = [chat_prompt(tokenizer, q, r) for q, r in zip(QUESTIONS[:n], REQUESTS[:n])]
    return {
        "query": [p + a + tokenizer.eos_token for p, a in zip(prompts, RESPONSES)],
        "prompts": prompts,
        "labels": [request_to_label(spec, r) for r in REQUESTS[:n]],
    }


@pytest.mark.integration
def test_server_answers_openrlhfs_client_with_the_scorers_rewards_batching_concurrent_requests(
    engine_of, policy_tokenizer
):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    engine = engine_of(max_batch_size=64, max_wait_ms=50)
    with serving(engine) as base:
        outputs = run_executor(
            SingleTurnAgentExecutor(base + "/get_reward"), policy_tokenizer, QUESTIONS, RESPONSES, REQUESTS
        )
        stats = get_json(base + "/stats")
    expected = engine.scorer.score(QUESTIONS, RESPONSES, REQUESTS)
    # OpenRLHF keeps the server's 1-element lists as they are (as with its own serve_rm).
    assert [out["reward"][0] for out in outputs] == pytest.approx(expected.rewards.tolist(), abs=1e-4)
    assert [out["scores"] for out in outputs] == [out["reward"] for out in outputs]
    logs = outputs[0]["extra_logs"]
    assert logs["moslim/errors"] == [0.0] and logs["moslim/verbosity/requested"] == [1.0]
    assert logs["moslim/verbosity/p_target"][0] == pytest.approx(expected.probs[0, 1, 1].item(), abs=1e-4)
    assert stats["requests"] == len(QUESTIONS) and stats["samples"] == len(QUESTIONS)
    assert stats["forward_calls"] < len(QUESTIONS) // 2, stats  # 16 concurrent single-sample requests, few forwards


@pytest.mark.integration
@pytest.mark.parametrize("source", ["mixed", "rules only"])
def test_the_server_scores_rule_objectives_exactly_beside_learned_ones_and_the_driver_accepts_it(
    minilm_dir, tmp_path, policy_tokenizer, source
):
    """A checkpoint with one head beside two rules, and a spec file of rules only (no model loaded)."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    if source == "mixed":
        path, spec, requests = save_minilm_rm(tmp_path / "rm", minilm_dir, MIXED_SPEC), MIXED_SPEC, MIXED_REQUESTS
    else:
        path, spec, requests = write_rules_spec(tmp_path / "rules.yaml"), RULES_SPEC, RULES_REQUESTS
    engine = build_engine(RewardConfig(rm_path=str(path), strict=True))
    questions = QUESTIONS[:4]
    with serving(engine) as base:
        executor = SingleTurnAgentExecutor(base + "/get_reward")
        outputs = run_executor(executor, policy_tokenizer, questions, MIXED_RESPONSES, requests, spec=spec)
        health = get_json(base + "/health")
    rewards = [out["reward"][0] for out in outputs]
    assert rewards == pytest.approx(engine.scorer.score(questions, MIXED_RESPONSES, requests).rewards.tolist())
    for name, hits in RULES_HITS.items():
        assert [out["extra_logs"][f"moslim/{name}/hit"][0] for out in outputs] == hits
    if source == "rules only":
        assert rewards == pytest.approx(RULES_REWARDS, abs=1e-6) and engine.scorer.model is None
    assert health["objectives"] == list(spec.names)
    RewardConfig(strict=True, spec_fingerprint=spec.fingerprint).check_server(base, health)  # what train_ppo_ray does


@pytest.mark.integration
def test_non_strict_server_gives_the_fallback_reward_with_its_reason_and_counts_each_failure(engine_of, caplog):
    engine = engine_of({"fallback_reward": -1.5})
    body = {"query": ["<|im_start|>assistant\nhi"], "prompts": ["<|im_start|>assistant\n"], "labels": ["{}"]}
    with serving(engine) as base, caplog.at_level(logging.WARNING, logger="moslim_plugin.integration.reward_engine"):
        status, reply = post(base + "/get_reward", body)
        stats = get_json(base + "/stats")
    assert status == 200 and reply["rewards"] == [-1.5] and reply["extra_logs"]["moslim/errors"] == [1.0]
    assert "expected a label" in reply["reasons"][0]
    assert stats["errors"] == 1 and stats["forward_calls"] == 0
    assert "could not be computed" in caplog.text and "expected a label" in caplog.text


@pytest.mark.integration
def test_server_answers_503_with_the_reasons_when_the_failure_policy_says_stop_and_counts_it(engine_of):
    body = {"query": ["no template here"], "prompts": ["no template here"], "labels": [None]}
    with serving(engine_of({"strict": True})) as base:
        status, reply = post(base + "/get_reward", body)
        status2, reply2 = post(base + "/get_reward", {**body, "labels": ['{"moslim": 1}']})
        stats = get_json(base + "/stats")
    assert status == 503 and "strict mode; 1 of 1 samples" in reply["error"] and "got None" in reply["error"]
    assert status2 == 503 and "expected a label" in reply2["error"]
    assert stats["http_503"] == 2 and stats["failed_requests"] == 2 and stats["errors"] == 2
    # Not strict: more than 50% of a window of 2 samples failing stops it too.
    with serving(engine_of({"max_error_share": 0.5, "error_window": 2})) as base:
        first, _ = post(base + "/get_reward", body)
        second, reply = post(base + "/get_reward", body)
    assert (first, second) == (200, 503) and "100% of the last 2 samples failed" in reply["error"]


@pytest.mark.integration
def test_a_mapping_that_fails_at_run_time_is_counted_and_its_reason_returned(engine_of, policy_tokenizer):
    engine = engine_of({"max_error_share": 0.9})
    engine.scorer.mapping = lambda probs, *args, **kwargs: (probs[..., 0].flatten(), probs[..., 0])  # wrong shape
    with serving(engine) as base:
        status, reply = post(base + "/get_reward", valid_body(policy_tokenizer, 2))
        stats = get_json(base + "/stats")
    assert status == 200 and reply["extra_logs"]["moslim/errors"] == [1.0, 1.0]
    assert all(reason.startswith("scorer failed") for reason in reply["reasons"])
    assert stats["errors"] == 2


@pytest.mark.integration
def test_server_refuses_oversized_malformed_and_empty_requests_naming_the_limit_and_counts_them(
    engine_of, policy_tokenizer
):
    engine = engine_of(max_queued_samples=4)
    with serving(engine, max_body_bytes=4096, max_samples=3) as base:
        too_big = post(base + "/get_reward", b'{"query": ["' + b"x" * 5000 + b'"]}')
        too_many = post(base + "/get_reward", valid_body(policy_tokenizer, 4))
        missing = post(base + "/get_reward", {"query": ["x"]})
        not_json = post(base + "/get_reward", b"{nope")
        empty = post(base + "/get_reward", {"query": [], "prompts": [], "labels": []})
        valid = post(base + "/get_reward", valid_body(policy_tokenizer, 3))
        health = get_json(base + "/health")
        stats = get_json(base + "/stats")
    assert too_big[0] == 413 and "limit of 4096 bytes (--server.max_body_mb)" in too_big[1]["error"]
    assert too_many[0] == 413 and "4 samples in one request, over the server's limit of 3" in too_many[1]["error"]
    assert missing[0] == 400 and "'prompts'" in missing[1]["error"] and "'labels'" in missing[1]["error"]
    assert not_json[0] == 400 and empty[0] == 400 and "empty request" in empty[1]["error"]
    assert valid[0] == 200 and valid[1]["reasons"] == [None] * 3
    assert stats["http_413"] == 2 and stats["http_400"] == 3 and stats["failed_requests"] == 5
    assert health["objectives"] == ["helpfulness", "verbosity", "harmlessness"]
    assert health["reward_config"]["spec_fingerprint"] == load_spec("helpsteer").fingerprint


@pytest.mark.integration
def test_a_request_over_the_queue_bound_is_refused_with_503(engine_of, policy_tokenizer):
    engine = engine_of(max_queued_samples=2)
    with serving(engine) as base:
        status, reply = post(base + "/get_reward", valid_body(policy_tokenizer, 3))
        stats = get_json(base + "/stats")
    assert status == 503 and "limit of 2" in reply["error"] and stats["queue_full"] == 1 and stats["http_503"] == 1


class GatedScorer:
    """The real scorer, held at a gate before each call: lets a test queue requests while the batcher is busy."""

    def __init__(self, scorer):
        self.scorer, self.model, self.gate, self.calls = scorer, scorer.model, threading.Event(), []

    def score(self, questions, responses, requests):
        self.gate.wait(timeout=60)
        self.calls.append(len(questions))
        return self.scorer.score(questions, responses, requests)


@pytest.mark.integration
def test_a_large_request_is_interleaved_with_other_clients_and_a_late_request_misses_its_deadline(
    engine_of, policy_tokenizer
):
    engine = engine_of(max_batch_size=4, chunk_size=2, max_wait_ms=0, deadline_s=30)
    gated = engine.scorer = GatedScorer(engine.scorer)
    big, small = valid_body(policy_tokenizer, 4), valid_body(policy_tokenizer, 1)
    big = {key: values * 5 for key, values in big.items()}  # 20 samples: 5 batches of 4 on its own
    done = []
    big_future = engine.submit(big["query"], big["prompts"], big["labels"])
    big_future.add_done_callback(lambda f: done.append("big"))
    time.sleep(0.2)  # the batcher takes the first 4 samples and waits at the gate
    small_future = engine.submit(small["query"], small["prompts"], small["labels"])
    small_future.add_done_callback(lambda f: done.append("small"))
    gated.gate.set()
    assert len(small_future.result(timeout=60)["rewards"]) == 1 and len(big_future.result(timeout=60)["rewards"]) == 20
    assert done == ["small", "big"]  # served in the second batch, not after all 20 samples
    assert gated.calls == [4, 4, 4, 4, 4, 1]  # full batches: the small request rode in the second one

    engine.deadline_s = 0.1
    gated.gate.clear()
    first = engine.submit(small["query"], small["prompts"], small["labels"])
    time.sleep(0.2)  # the batcher holds `first` at the gate
    late = engine.submit(small["query"], small["prompts"], small["labels"])
    time.sleep(0.3)  # `late` passes its deadline while waiting
    gated.gate.set()
    assert first.result(timeout=60)["reasons"] == [None]
    with pytest.raises(DeadlineExceeded, match="not done within its deadline of 0.1 s"):
        late.result(timeout=60)
    assert engine.stats["deadline_exceeded"] == 1
    with pytest.raises(QueueFull):
        engine.submit(*([["q"] * 5000] * 3))


@pytest.mark.integration
def test_the_driver_refuses_a_reward_server_whose_configuration_differs_from_its_command_line(engine_of):
    args = NS(
        data=NS(apply_chat_template=True, label_key="label", max_len=1024),
        reward=NS(model_name_or_path=None, remote_url=None),
        train=NS(agent_func_path=None),
        algo=NS(advantage=NS(estimator="rloo")),
        critic=NS(model_name_or_path=None),
        rollout=NS(max_new_tokens=256),
    )
    with serving(engine_of({"mapping": "expected_level"})) as base:
        args.reward.remote_url = base + "/get_reward"
        with pytest.raises(UserError) as refused:
            launcher.check_moslim_args(launcher.split_argv(["--moslim.spec", "helpsteer"])[0], args)
        same = launcher.split_argv(["--moslim.spec", "helpsteer", "--moslim.mapping", "expected_level"])[0]
        accepted = launcher.check_moslim_args(same, args)
    assert "mapping: server 'expected_level', command line 'moslim'" in str(refused.value)
    assert accepted.reward.mapping == "expected_level" and accepted.in_process is False


@pytest.mark.unit
def test_serve_reward_binds_loopback_by_default_and_spells_every_flag_dotted():
    parser = build_parser()
    args = vars(parser.parse_args(["--reward.model_name_or_path", "rm", "--moslim.strict"]))
    assert args["server.host"] == "127.0.0.1" and args["moslim.strict"] and args["moslim.fallback_reward"] == 0.0
    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    # --threads is spelled as on every command that runs a model (demo, screen, evaluate, train-rm, evaluate-rm).
    assert [flag for flag in flags if "." not in flag and flag not in ("--help", "--threads")] == []
    assert "--data.max_len" not in flags and "--moslim.max_length" in flags


@pytest.mark.integration
def test_every_answer_that_is_not_200_is_counted_with_its_reason_including_internal_errors(
    engine_of, policy_tokenizer
):
    from moslim_plugin.integration.server import MAX_JSON_DEPTH

    engine = engine_of()
    deep = {"query": [], "prompts": [], "labels": [], "x": json.loads("[" * 20 + "]" * 20)}
    with serving(engine) as base:
        too_deep = post(base + "/get_reward", deep)
        past_pythons_reader = post(base + "/get_reward", b"[" * 100_000 + b"]" * 100_000)
        not_found = get(base + "/no/such/path")
        wrong_method = get(base + "/get_reward")
        # A deeply nested label is one bad sample with its reason, not a failed batch.
        body = valid_body(policy_tokenizer, 2)
        body["labels"][1] = "[" * 5000 + "]" * 5000
        one_bad_label = post(base + "/get_reward", body)
        engine.log_keys = None  # a bug of ours in building the reply: the handler's 500, counted like the rest
        internal = post(base + "/get_reward", valid_body(policy_tokenizer, 1))
        stats = get_json(base + "/stats")
    assert too_deep[0] == past_pythons_reader[0] == 400
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in too_deep[1]["error"]
    assert one_bad_label[0] == 200 and one_bad_label[1]["reasons"][0] is None
    assert "nested too deeply" in one_bad_label[1]["reasons"][1]
    assert (not_found[0], wrong_method[0], internal[0]) == (404, 405, 500)
    assert "internal error: TypeError" in internal[1]["error"]
    assert stats["rejected"] == {
        "400 body nested too deeply": 2,
        "404 Not Found": 1,
        "405 Method Not Allowed": 1,
        "500 internal error (TypeError)": 1,
    }
    assert stats["http_400"] == 2 and stats["http_500"] == 1 and stats["failed_requests"] == 5


@pytest.mark.integration
def test_an_api_key_guards_every_endpoint_and_openrlhfs_client_passes_it_in_the_url(engine_of, policy_tokenizer):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    key = "k" * 20 + "-secret"
    engine = engine_of()
    with serving(engine, api_key=key) as base:
        refused = [get(base + path) for path in ("/health", "/stats", "/no/such/path")]
        refused.append(post(base + "/get_reward?api_key=wrong-key-of-some-length", valid_body(policy_tokenizer)))
        health = get(base + "/health", {"Authorization": f"Bearer {key}"})
        outputs = run_executor(
            SingleTurnAgentExecutor(base + f"/get_reward?api_key={key}"), policy_tokenizer, QUESTIONS[:2],
            RESPONSES[:2], REQUESTS[:2],
        )  # fmt: skip
        stats = get_json(base + f"/stats?api_key={key}")
        args = NS(
            data=NS(apply_chat_template=True, label_key="label", max_len=64), reward=NS(model_name_or_path=None),
            train=NS(agent_func_path=None), algo=NS(advantage=NS(estimator="rloo")), rollout=NS(max_new_tokens=32),
            critic=NS(model_name_or_path=None),
        )  # fmt: skip
        args.reward.remote_url = base + f"/get_reward?api_key={key}"
        accepted = launcher.check_moslim_args(launcher.split_argv(["--moslim.spec", "helpsteer"])[0], args)
        args.reward.remote_url = base + "/get_reward?api_key=not-the-key-at-all"
        with pytest.raises(UserError) as without:
            launcher.check_moslim_args(launcher.split_argv(["--moslim.spec", "helpsteer"])[0], args)
    assert [status for status, _ in refused] == [401] * 4 and "needs its API key" in refused[0][1]["error"]
    assert health[0] == 200 and health[1]["reward_config"]["rm_path"] == engine.config.rm_path
    assert [len(out["reward"]) for out in outputs] == [1, 1]
    assert stats["rejected"] == {"401 missing or wrong API key": 4} and stats["samples"] == 2
    assert accepted.reward.spec_fingerprint == load_spec("helpsteer").fingerprint
    assert "HTTP Error 401" in str(without.value) and "add ?api_key=<key>" in str(without.value)
    assert "not-the-key" not in str(without.value)  # a key in the URL stays out of messages
    with serving(engine_of()) as base:
        open_health = get_json(base + "/health")
    assert "rm_path" not in open_health["reward_config"]  # an open server shows no paths


@pytest.mark.unit
@pytest.mark.parametrize(
    "host, warned", [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True), ("10.1.2.3", True)]
)
def test_binding_anything_but_loopback_is_warned_about_and_the_warning_says_whether_a_key_guards_it(host, warned):
    from moslim_plugin.integration.server import exposure_warning

    open_text, guarded_text = exposure_warning(host, False), exposure_warning(host, True)
    assert (open_text is not None, guarded_text is not None) == (warned, warned)
    if warned:
        assert f"listens on {host}, reachable from other machines" in open_text
        assert "no API key" in open_text and "--server.api_key_file" in open_text
        assert "every request must carry the API key" in guarded_text


@pytest.mark.unit
@pytest.mark.parametrize(
    "content, message",
    [
        ("short-key", "the key must be at least 16 printable characters without spaces \\(got 9 characters\\)"),
        ("", "got 0 characters"),
        ("a key with spaces in it", "without spaces"),
    ],
)
def test_an_api_key_file_must_hold_a_usable_key(tmp_path, content, message):
    from moslim_plugin.integration.server import ServerConfig

    key_file = tmp_path / "key"
    key_file.write_text(content + "\n")
    with pytest.raises(UserError, match=f"--server.api_key_file {key_file}: .*{message}"):
        ServerConfig(api_key_file=str(key_file)).key()
    assert ServerConfig(api_key_file=str(key_file.with_name("good"))).api_key_file  # read only by key()
    with pytest.raises(UserError, match="cannot be read"):
        ServerConfig(api_key_file=str(tmp_path / "missing")).key()
    with pytest.raises(UserError, match="pass one of them"):
        ServerConfig(api_key="k" * 16, api_key_file=str(key_file)).key()


@pytest.mark.integration
def test_the_console_script_warns_at_start_up_when_binding_a_public_address_and_then_wants_its_key(
    rm_checkpoint, tmp_path
):
    import subprocess
    import sys
    from pathlib import Path

    key = "k" * 32
    (tmp_path / "key").write_text(key + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["serve-reward", "--reward.model_name_or_path", str(rm_checkpoint), "--server.host", "0.0.0.0"]
    argv += ["--server.port", str(port), "--server.api_key_file", str(tmp_path / "key"), "--threads", "1"]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moslim-openrlhf"), *argv], stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline, answers = time.monotonic() + 120, None
        while answers is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                base = f"http://127.0.0.1:{port}"
                answers = [get(base + "/health"), get(base + "/health", {"Authorization": f"Bearer {key}"})]
            except urllib.error.URLError:
                time.sleep(0.5)
    finally:
        proc.terminate()
        err = proc.communicate(timeout=60)[1]
    assert answers is not None, err
    assert [status for status, _ in answers] == [401, 200], answers
    warning = [line for line in err.splitlines() if "reachable from other machines" in line]
    assert len(warning) == 1 and "WARNING" in warning[0] and "every request must carry the API key" in warning[0]
