"""The MOSLIM reward outside OpenRLHF's reward-model actor: `--reward.remote_url <file.py>` and the HTTP server.

Both paths receive what OpenRLHF's `SingleTurnAgentExecutor` sends: `queries` (the policy-tokenizer decode of
prompt + response, special tokens kept, prompt possibly left-truncated), `prompts` (the templated prompt string) and
`labels` (the MOSLIM label with the target levels). Targets always come from the label; the response is the text
after the prompt inside the query, cut at the template's end-of-turn marker; the question is the last user message
of the (untruncated) prompt without the directive.

`RewardEngine` turns such samples into rewards and micro-batches concurrent callers (threads of the `.py` path,
HTTP requests of the server) into one forward pass. OpenRLHF logs exceptions from the reward code at INFO and
swallows them, so a sample we cannot score gets a finite fallback reward, is counted in `extra_logs["moslim/errors"]`
and logged at WARNING; in strict mode the caller gets `StrictRewardError` instead.

`moslim-openrlhf reward-func-path` prints the path of the `.py` file (see `remote/moslim_reward_func.py`).
"""

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

REWARD_FUNC_FILE = Path(__file__).parent / "remote" / "moslim_reward_func.py"
ERRORS_KEY = "moslim/errors"

# Chat-template markers: where the assistant turn starts, where a user turn starts, what ends a turn. The policy's
# special tokens are kept in the query, so these strings appear verbatim. "auto" picks the first whose assistant
# marker occurs in the prompt; a JSON object {"assistant": ..., "user": ..., "end": [...]} defines another template.
TEMPLATES = {
    "chatml": {  # ChatML: SmolLM2, Qwen2
        "assistant": "<|im_start|>assistant\n",
        "user": "<|im_start|>user\n",
        "end": ["<|im_end|>", "<|endoftext|>"],
    },
    "llama3": {
        "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "user": "<|start_header_id|>user<|end_header_id|>\n\n",
        "end": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
    },
}
DEFAULT_TEMPLATE = "auto"


class StrictRewardError(BaseException):
    """Raised in strict mode when a sample could not be scored.

    A BaseException on purpose: OpenRLHF's `SingleTurnAgentExecutor.execute` wraps the reward call in
    `except Exception` and only logs at INFO. This one passes through it, fails the vLLM actor's
    `generate_responses` task and reaches the trainer as a RayTaskError carrying this message.
    """


def resolve_template(template) -> dict | str:
    """A template name, "auto", a dict, or a JSON object string -> "auto" or a dict with assistant/user/end."""
    if isinstance(template, str) and template.lstrip().startswith("{"):
        template = json.loads(template)
    if isinstance(template, dict):
        if not isinstance(template.get("assistant"), str) or not template["assistant"]:
            raise ValueError(f"a custom template needs a non-empty 'assistant' marker, got {template!r}")
        end = template.get("end", [])
        if not isinstance(end, list) or not all(isinstance(e, str) and e for e in end):
            raise ValueError(f"template 'end' must be a list of non-empty strings, got {end!r}")
        return {"assistant": template["assistant"], "user": template.get("user") or "", "end": end}
    if template == "auto":
        return "auto"
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}: expected auto, {', '.join(TEMPLATES)} or a JSON object")
    return TEMPLATES[template]


def split_query(query: str, prompt: str, template="auto") -> tuple[str, str]:
    """(question, response) of one OpenRLHF sample. Raises ValueError naming what was not found."""
    if not isinstance(query, str) or not isinstance(prompt, str):
        raise ValueError(f"query and prompt must be strings, got {type(query).__name__} and {type(prompt).__name__}")
    template = resolve_template(template)
    if template == "auto":
        template = next((t for t in TEMPLATES.values() if t["assistant"] in prompt), None)
        if template is None:
            raise ValueError(
                f"no known assistant marker in the prompt (templates: {', '.join(TEMPLATES)}); set the template "
                f"(MOSLIM_TEMPLATE / --moslim.template) for this policy. Prompt end: {prompt[-120:]!r}"
            )
    marker = template["assistant"]
    gen_start = prompt.rfind(marker)
    if gen_start < 0:
        raise ValueError(f"the prompt has no assistant marker {marker!r}: {prompt[-120:]!r}")
    # The query starts with a suffix of the prompt (OpenRLHF truncates prompts from the left), so the response starts
    # right after an occurrence of the prompt's generation tail whose text up to there is a suffix of the prompt. The
    # LAST such occurrence: a query truncated to start at an earlier assistant turn also matches its first one. A few
    # leading characters may differ when truncation split a multi-byte character.
    tail = prompt[gen_start:]
    response_start, pos = None, query.find(tail)
    while pos >= 0:
        end = pos + len(tail)
        if any(prompt.endswith(query[skip:end]) for skip in range(min(4, end) + 1)):
            response_start = end
        pos = query.find(tail, pos + 1)
    if response_start is None:
        raise ValueError(f"the query does not contain the end of its prompt {tail!r}: query starts {query[:120]!r}")
    response = query[response_start:]
    for end_marker in template["end"]:
        response = response.split(end_marker, 1)[0]
    # The last user turn of the untruncated prompt; without a user marker, everything before the generation tail.
    user = template["user"]
    user_start = prompt.rfind(user, 0, gen_start) if user else -1
    question = prompt[user_start + len(user) : gen_start] if user_start >= 0 else prompt[:gen_start]
    for end_marker in template["end"]:
        question = question.split(end_marker, 1)[0]
    return question.strip(), response.strip()


class RewardEngine:
    """Scores OpenRLHF remote-reward samples with a `Scorer`, micro-batching concurrent callers.

    `submit(queries, prompts, labels)` may be called from any thread; it returns a future of OpenRLHF's reply
    `{"rewards": [...], "scores": [...], "extra_logs": {key: [...]}}`. One worker thread takes everything queued
    (up to `max_batch_size` samples, waiting at most `max_wait_ms` after the first) and runs one forward pass.
    """

    def __init__(
        self, scorer, template=DEFAULT_TEMPLATE, strict=False, fallback_reward=0.0, max_batch_size=64, max_wait_ms=5.0
    ):
        if not math.isfinite(fallback_reward):
            raise ValueError(f"fallback_reward must be finite, got {fallback_reward!r}")
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1 and max_wait_ms >= 0, got {max_batch_size}, {max_wait_ms}")
        self.scorer, self.spec = scorer, scorer.model.spec
        self.template = resolve_template(template)
        self.strict, self.fallback_reward = strict, float(fallback_reward)
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        # Every reply carries the same keys (OpenRLHF stacks extra_logs key by key across samples).
        # `requested` is 1 where the sample asked for the objective; its diagnostics are 0 where not, so the mean
        # of p_target over requesting samples is the logged p_target divided by the logged requested.
        diagnostics = ("p_target", "hit", "term", "requested")
        self.log_keys = [ERRORS_KEY] + [f"moslim/{name}/{d}" for name in self.spec.names for d in diagnostics]
        self.stats = {"requests": 0, "samples": 0, "forward_calls": 0, "errors": 0, "max_batch": 0}
        self._queue = queue.Queue()
        self._worker = None
        self._lock = threading.Lock()

    def submit(self, queries, prompts, labels) -> concurrent.futures.Future:
        if not (isinstance(queries, list) and isinstance(prompts, list) and isinstance(labels, list)):
            raise ValueError("queries, prompts and labels must be lists")
        if not len(queries) == len(prompts) == len(labels):
            raise ValueError(f"got {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels")
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="moslim-reward-batcher", daemon=True)
                self._worker.start()
        future = concurrent.futures.Future()
        self._queue.put((list(zip(queries, prompts, labels)), future))
        return future

    def __call__(self, queries, prompts, labels) -> dict:
        return self.submit(queries, prompts, labels).result()

    def _run(self):
        while True:
            batch = [self._queue.get()]
            size, deadline = len(batch[0][0]), time.monotonic() + self.max_wait
            while size < self.max_batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            samples = [s for request, _ in batch for s in request]
            try:
                outcomes = self.score_samples(samples)
            except BaseException as e:  # a bug of ours: every waiting caller sees it, the worker keeps serving
                logger.exception("MOSLIM reward batch of %d samples failed", len(samples))
                for _, future in batch:
                    future.set_exception(e)
                continue
            start = 0
            for request, future in batch:
                part, start = outcomes[start : start + len(request)], start + len(request)
                try:
                    future.set_result(self._reply(part))
                except BaseException as e:
                    future.set_exception(e)

    def score_samples(self, samples) -> list:
        """One outcome per (query, prompt, label): (reward, extra_logs) or (None, reason)."""
        from moslim_plugin.core.directives import label_to_request, strip_directive

        outcomes, todo = [None] * len(samples), []
        for i, (query, prompt, label) in enumerate(samples):
            try:
                request = label_to_request(self.spec, label)
                question, response = split_query(query, prompt, self.template)
                question = strip_directive(self.spec, request, question)
                todo.append((i, question, response, request))
            except (ValueError, TypeError) as e:
                outcomes[i] = (None, f"bad sample: {e}")
        self._forward(todo, outcomes)
        with self._lock:
            self.stats["samples"] += len(samples)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(samples))
            self.stats["errors"] += sum(reward is None for reward, _ in outcomes)
        return outcomes

    def _forward(self, todo, outcomes):
        if not todo:
            return
        with self._lock:
            self.stats["forward_calls"] += 1
        try:
            result = self.scorer.score([t[1] for t in todo], [t[2] for t in todo], [t[3] for t in todo])
        except Exception as e:
            if len(todo) == 1:
                outcomes[todo[0][0]] = (None, f"scorer failed: {type(e).__name__}: {e}")
                return
            # Score one by one so that one bad sample does not cost the whole micro-batch its rewards.
            logger.warning("MOSLIM scorer failed on a batch of %d (%s); rescoring one by one", len(todo), e)
            for t in todo:
                self._forward([t], outcomes)
            return
        for row, (i, *_rest) in enumerate(todo):
            reward = float(result.rewards[row])
            if not math.isfinite(reward):
                outcomes[i] = (None, f"scorer returned a non-finite reward {reward}")
                continue
            diagnostics = _row_diagnostics(result, row)
            for name, requested in zip(self.spec.names, result.requested[row].tolist()):
                diagnostics[f"moslim/{name}/requested"] = float(requested)
            logs = {key: float(diagnostics.get(key, 0.0)) for key in self.log_keys[1:]}
            outcomes[i] = (reward, logs)

    def _reply(self, outcomes) -> dict:
        rewards, logs, failures = [], {k: [] for k in self.log_keys}, []
        for n, (reward, extra) in enumerate(outcomes):
            failed = reward is None
            if failed:
                logger.warning("MOSLIM reward could not be computed (sample %d of its request): %s", n, extra)
                failures.append(extra)
                reward, extra = self.fallback_reward, {}
            rewards.append(reward)
            logs[ERRORS_KEY].append(1.0 if failed else 0.0)
            for key in self.log_keys[1:]:
                logs[key].append(extra.get(key, 0.0))  # failed samples log 0 (and 1 in moslim/errors)
        with self._lock:
            self.stats["requests"] += 1
        if failures and self.strict:
            raise StrictRewardError(
                f"MOSLIM strict mode: {len(failures)} of {len(outcomes)} samples could not be scored: "
                + "; ".join(failures)
            )
        return {"rewards": rewards, "scores": list(rewards), "extra_logs": logs}


def _row_diagnostics(result, row: int) -> dict:
    """`ScoreResult.diagnostics()` of one sample, so that each OpenRLHF sample carries its own values."""
    import torch  # lazily: `reward-func-path` only prints a path

    one = {
        f.name: getattr(result, f.name)[row : row + 1]
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)
    }
    return dataclasses.replace(result, **one).diagnostics()


def env_flag(name: str) -> bool:
    value = os.environ.get(name, "0").strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(f"{name}={value!r}: expected 0/1/true/false")
    return value in ("1", "true", "yes")


def build_engine(
    rm_path,
    mapping="moslim",
    mapping_kwargs=None,
    device=None,
    dtype=None,
    max_length=512,
    rm_batch_size=None,
    **engine_kwargs,
) -> RewardEngine:
    """Load the MOSLIM RM checkpoint into a `Scorer` and wrap it in a `RewardEngine`.

    `rm_batch_size`: rows per model call inside one micro-batch. The scorer sorts a micro-batch by length, so smaller
    chunks pad less: on CPU, 16 is ~1.6x faster than one padded batch of 64 (HH-RLHF lengths, MiniLM); on GPU,
    bigger calls keep the device busy. Default: 16 on CPU, the micro-batch size on GPU.
    """
    import torch

    from moslim_plugin.core.scorer import Scorer

    if not rm_path or not Path(rm_path).is_dir():
        raise FileNotFoundError(f"MOSLIM reward model checkpoint folder not found: {rm_path!r}")
    if isinstance(mapping_kwargs, str):
        mapping_kwargs = json.loads(mapping_kwargs or "{}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = dtype or ("bf16" if str(device).startswith("cuda") else "fp32")
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
    scorer = Scorer.from_pretrained(
        rm_path, mapping=mapping, mapping_kwargs=mapping_kwargs or {}, device=device, dtype=dtypes[dtype]
    )
    scorer.max_length = max_length
    scorer.batch_size = rm_batch_size or (16 if device == "cpu" else engine_kwargs.get("max_batch_size", 64))
    return RewardEngine(scorer, **engine_kwargs)


def engine_from_env() -> RewardEngine:
    """The `.py` reward file's configuration: OpenRLHF passes it nothing but the path, so it comes from env vars."""
    return build_engine(
        os.environ.get("MOSLIM_RM_PATH"),
        mapping=os.environ.get("MOSLIM_MAPPING", "moslim"),
        mapping_kwargs=os.environ.get("MOSLIM_MAPPING_KWARGS", "{}"),
        device=os.environ.get("MOSLIM_RM_DEVICE") or None,
        dtype=os.environ.get("MOSLIM_RM_DTYPE") or None,
        max_length=int(os.environ.get("MOSLIM_MAX_LENGTH", "512")),
        rm_batch_size=int(os.environ.get("MOSLIM_RM_BATCH", "0")) or None,
        template=os.environ.get("MOSLIM_TEMPLATE", DEFAULT_TEMPLATE),
        strict=env_flag("MOSLIM_STRICT"),
        fallback_reward=float(os.environ.get("MOSLIM_FALLBACK_REWARD", "0")),
        max_batch_size=int(os.environ.get("MOSLIM_MAX_BATCH", "64")),
        max_wait_ms=float(os.environ.get("MOSLIM_MAX_WAIT_MS", "5")),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="moslim-openrlhf reward-func-path",
        description="Print the path of the MOSLIM reward function file to pass as --reward.remote_url. It is "
        "configured by environment variables (set them in the Ray job's runtime env): MOSLIM_RM_PATH (required), "
        "MOSLIM_MAPPING, MOSLIM_MAPPING_KWARGS (JSON), MOSLIM_STRICT (0/1), MOSLIM_FALLBACK_REWARD (default 0), "
        "MOSLIM_TEMPLATE (auto|chatml|llama3|JSON), MOSLIM_RM_DEVICE, MOSLIM_RM_DTYPE (fp32|bf16|fp16), "
        "MOSLIM_MAX_LENGTH, MOSLIM_MAX_BATCH, MOSLIM_MAX_WAIT_MS, MOSLIM_RM_BATCH (rows per model call).",
    )
    parser.parse_args(argv)
    if not REWARD_FUNC_FILE.is_file():
        raise FileNotFoundError(f"{REWARD_FUNC_FILE} is missing from the installed package: reinstall moslim-plugin")
    print(REWARD_FUNC_FILE)
    return 0
