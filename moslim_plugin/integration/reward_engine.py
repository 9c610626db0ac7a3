"""`RewardEngine`: the MOSLIM reward of OpenRLHF samples, the same on every reward path (in-process actor, `.py`
reward function, HTTP server).

Every path receives what OpenRLHF's `SingleTurnAgentExecutor` sends: `queries`, `prompts` and `labels` (the MOSLIM
label with the target levels). Targets always come from the label; question and response come from the text
(`templates.split_query`), the question without the directive.

`RewardEngine` turns such samples into rewards and micro-batches concurrent callers (threads of the `.py` path,
HTTP requests of the server) into one forward pass. A sample we cannot score (bad or empty label, a label that
disagrees with the prompt's directive, no template marker, a scorer failure) gets the finite fallback reward, its
reason in the reply's `reasons`, a 1 in `extra_logs["moslim/errors"]` and a WARNING log line. OpenRLHF logs
exceptions from reward code at INFO and swallows them, so when the configuration's failure policy says stop
(strict, or more than `max_error_share` of recent samples failed) the caller gets `RewardFailure`, a
BaseException, which gets through.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import math
import threading
import time

from moslim_plugin import UserError
from moslim_plugin.integration.templates import resolve_template, split_query

logger = logging.getLogger(__name__)

ERRORS_KEY = "moslim/errors"
TRUNCATED_KEY = "moslim/truncated"  # 1 for a sample longer than --moslim.max_length, scored truncated
STATS_KEYS = ("requests", "samples", "forward_calls", "errors", "truncated", "max_batch", "queue_full",
              "deadline_exceeded", "failed_requests")  # fmt: skip


class RewardFailure(BaseException):
    """Raised when samples could not be scored and the failure policy says stop (strict, or too many failures).

    A BaseException on purpose: OpenRLHF's `SingleTurnAgentExecutor.execute` wraps the reward call in
    `except Exception` and only logs at INFO. This one passes through it, fails the vLLM actor's
    `generate_responses` task and reaches the trainer as a RayTaskError carrying this message.
    """


class QueueFull(Exception):
    """The engine's queue is at its sample limit (the server answers 503)."""


class DeadlineExceeded(Exception):
    """A request was not scored within the engine's deadline (the server answers 503)."""


class RewardEngine:
    """Scores OpenRLHF remote-reward samples with a `Scorer`, micro-batching concurrent callers fairly.

    `submit(queries, prompts, labels)` may be called from any thread; it returns a future of OpenRLHF's reply
    `{"rewards", "scores", "extra_logs": {key: [...]}, "reasons": [None | why]}`. A request is split into chunks of
    `chunk_size` samples; one worker thread fills each forward pass (up to `max_batch_size` samples, waiting at
    most `max_wait_ms` for more) with one chunk per waiting request in turn, so a huge request cannot make the
    others wait for all of it. The queue holds at most `max_queued_samples` (`QueueFull` beyond), and a request not
    finished `deadline_s` after it arrived fails with `DeadlineExceeded`.

    Failure policy (`config`, a `RewardConfig`): an unscorable sample gets `fallback_reward` and its reason, unless
    `strict`, or unless more than `max_error_share` of the last `error_window` samples failed: then the request
    fails with `RewardFailure` (the server answers 503; the `.py` function raises it through OpenRLHF).
    """

    def __init__(
        self, scorer, config, max_batch_size=64, max_wait_ms=5.0, max_queued_samples=4096, chunk_size=16,
        deadline_s=120.0,
    ):  # fmt: skip
        # Written so that NaN fails each comparison (serve-reward's flags are checked by ServerConfig already).
        if not (max_batch_size >= 1 and max_wait_ms >= 0 and chunk_size >= 1 and max_queued_samples >= 1
                and 0 < deadline_s < float("inf")):  # fmt: skip
            raise UserError(
                f"need max_batch_size, chunk_size, max_queued_samples >= 1, max_wait_ms >= 0 and deadline_s > 0, got "
                f"{max_batch_size}, {chunk_size}, {max_queued_samples}, {max_wait_ms}, {deadline_s}"
            )
        self.scorer, self.spec, self.config = scorer, scorer.spec, config
        self.template = resolve_template(config.template)
        self.max_batch_size, self.max_wait, self.chunk_size = max_batch_size, max_wait_ms / 1000.0, chunk_size
        self.max_queued_samples, self.deadline_s = max_queued_samples, deadline_s
        # Every reply carries the same keys (OpenRLHF stacks extra_logs key by key across samples).
        # `requested` is 1 where the sample asked for the objective; its diagnostics are 0 where not, so the mean
        # of p_target over requesting samples is the logged p_target divided by the logged requested.
        diagnostics = ("p_target", "hit", "term", "requested")
        self.log_keys = [ERRORS_KEY, TRUNCATED_KEY] + [
            f"moslim/{name}/{d}" for name in self.spec.names for d in diagnostics
        ]
        self.stats = dict.fromkeys(STATS_KEYS, 0)
        self._recent = collections.deque(maxlen=config.error_window)  # 1 per failed sample, 0 per scored one
        self._active = collections.OrderedDict()  # _Request -> None, in round-robin order
        self._queued = 0  # samples waiting for a forward pass
        self._cond = threading.Condition()
        self._worker = None

    def count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self.stats[key] = self.stats.get(key, 0) + n

    def submit(self, queries, prompts, labels) -> concurrent.futures.Future:
        if not (isinstance(queries, list) and isinstance(prompts, list) and isinstance(labels, list)):
            raise ValueError("queries, prompts and labels must be lists")
        if not len(queries) == len(prompts) == len(labels):
            raise ValueError(f"got {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels")
        if not queries:
            raise ValueError("empty request: no sample to score")
        request = _Request(list(zip(queries, prompts, labels)), self.chunk_size, time.monotonic() + self.deadline_s)
        with self._cond:
            if self._queued + len(queries) > self.max_queued_samples:
                self.stats["queue_full"] += 1
                raise QueueFull(
                    f"reward queue full: {self._queued} samples waiting, {len(queries)} more would pass the limit "
                    f"of {self.max_queued_samples}; retry later"
                )
            self._active[request] = None
            self._queued += len(queries)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="moslim-reward-batcher", daemon=True)
                self._worker.start()
            self._cond.notify()
        return request.future

    def __call__(self, queries, prompts, labels) -> dict:
        return self.submit(queries, prompts, labels).result()

    def _run(self):
        while True:
            with self._cond:
                while not self._active:
                    self._cond.wait()
                until = time.monotonic() + self.max_wait
                while self._queued < self.max_batch_size and (left := until - time.monotonic()) > 0:
                    self._cond.wait(left)
                items = self._take_batch()
            if items:
                self._score_items(items)

    def _take_batch(self) -> list:
        """(request, start, end) slices, one chunk per waiting request in turn; expired requests fail here."""
        now, items, size = time.monotonic(), [], 0
        for request in [r for r in self._active if now > r.deadline]:
            self._drop(request, DeadlineExceeded(f"reward request of {len(request.samples)} samples not done "
                                                 f"within its deadline of {self.deadline_s:g} s"))  # fmt: skip
            self.stats["deadline_exceeded"] += 1
        while size < self.max_batch_size and self._active:
            for request in list(self._active):
                start, end = request.chunks[0]
                end = min(end, start + self.max_batch_size - size)
                items.append((request, start, end))
                size += end - start
                request.chunks[0] = (end, request.chunks[0][1])
                if request.chunks[0][0] == request.chunks[0][1]:
                    request.chunks.popleft()
                self._active.move_to_end(request)  # the next batch starts with the requests not served now
                if not request.chunks:
                    del self._active[request]
                if size >= self.max_batch_size:
                    break
        self._queued -= size
        return items

    def _drop(self, request, error) -> None:
        del self._active[request]
        self._queued -= sum(end - start for start, end in request.chunks)
        request.chunks.clear()
        request.future.set_exception(error)

    def _score_items(self, items) -> None:
        samples = [s for request, start, end in items for s in request.samples[start:end]]
        try:
            outcomes = self.score_samples(samples)
        except BaseException as e:  # a bug of ours: every waiting caller sees it, the worker keeps serving
            logger.exception("MOSLIM reward batch of %d samples failed", len(samples))
            outcomes = [(None, f"internal error: {type(e).__name__}: {e}")] * len(samples)
        position = 0
        for request, start, end in items:
            request.outcomes[start:end] = outcomes[position : position + end - start]
            position += end - start
            request.done += end - start
            if request.done == len(request.samples) and not request.future.done():
                try:
                    request.future.set_result(self._reply(request.outcomes))
                except BaseException as e:
                    request.future.set_exception(e)

    def score_samples(self, samples) -> list:
        """One outcome per (query, prompt, label): (reward, extra_logs) or (None, reason)."""
        from moslim_plugin.core.directives import (
            DirectiveError,
            check_label_matches_directive,
            label_to_request,
            parse_directive,
            strip_directive,
        )

        outcomes, todo = [None] * len(samples), []
        for i, (query, prompt, label) in enumerate(samples):
            try:
                request = label_to_request(self.spec, label)
                # The label must ask for what the prompt's directive told the policy (and for something at all).
                check_label_matches_directive(self.spec, request, prompt)
                question, response = split_query(query, prompt, self.template)
                question = strip_directive(self.spec, request, question)
                try:  # directive text left in the question would reach the reward model's input
                    parse_directive(self.spec, question)
                except DirectiveError:
                    todo.append((i, question, response, request))
                else:
                    raise ValueError(f"the question still carries a directive after removing it: {question[:120]!r}")
            except (ValueError, TypeError) as e:
                outcomes[i] = (None, f"bad sample: {e}")
        self._forward(todo, outcomes)
        failed = [reward is None for reward, _ in outcomes]
        with self._cond:
            self.stats["samples"] += len(samples)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(samples))
            self.stats["errors"] += sum(failed)
            self.stats["truncated"] += int(sum(logs.get(TRUNCATED_KEY, 0.0) for r, logs in outcomes if r is not None))
            self._recent.extend(failed)
        return outcomes

    def _forward(self, todo, outcomes):
        if not todo:
            return
        self.count("forward_calls")
        try:
            result = self.scorer.score([t[1] for t in todo], [t[2] for t in todo], [t[3] for t in todo])
            if tuple(result.rewards.shape) != (len(todo),):
                raise ValueError(f"mapping returned rewards of shape {tuple(result.rewards.shape)} for {len(todo)}")
            rows = [self._row_logs(result, row) for row in range(len(todo))]
        except Exception as e:
            if len(todo) == 1:
                outcomes[todo[0][0]] = (None, f"scorer failed: {type(e).__name__}: {e}")
                return
            # Score one by one so that one bad sample does not cost the whole micro-batch its rewards.
            logger.warning("MOSLIM scorer failed on a batch of %d (%s); rescoring one by one", len(todo), e)
            for t in todo:
                self._forward([t], outcomes)
            return
        for (i, *_rest), (reward, logs) in zip(todo, rows):
            outcomes[i] = (reward, logs) if math.isfinite(reward) else (None, f"non-finite reward {reward}")

    def _row_logs(self, result, row: int) -> tuple[float, dict]:
        diagnostics = _row_diagnostics(result, row)
        for name, requested in zip(self.spec.names, result.requested[row].tolist()):
            diagnostics[f"moslim/{name}/requested"] = float(requested)
        diagnostics[TRUNCATED_KEY] = float(result.truncated[row]) if result.truncated is not None else 0.0
        return float(result.rewards[row]), {key: float(diagnostics.get(key, 0.0)) for key in self.log_keys[1:]}

    def _reply(self, outcomes) -> dict:
        rewards, logs, reasons = [], {k: [] for k in self.log_keys}, []
        for n, (reward, extra) in enumerate(outcomes):
            failed = reward is None
            if failed:
                logger.warning("MOSLIM reward could not be computed (sample %d of its request): %s", n, extra)
                reason, reward, extra = extra, self.config.fallback_reward, {}
            rewards.append(reward)
            reasons.append(reason if failed else None)
            logs[ERRORS_KEY].append(1.0 if failed else 0.0)
            for key in self.log_keys[1:]:
                logs[key].append(extra.get(key, 0.0))  # failed samples log 0 (and 1 in moslim/errors)
        failures = [r for r in reasons if r is not None]
        with self._cond:
            self.stats["requests"] += 1
            share = sum(self._recent) / self.config.error_window
        if failures and (self.config.strict or share > self.config.max_error_share):
            why = "strict mode" if self.config.strict else (
                f"{share:.0%} of the last {self.config.error_window} samples failed, more than "
                f"--moslim.max_error_share {self.config.max_error_share:g}"
            )  # fmt: skip
            raise RewardFailure(
                f"MOSLIM reward: {why}; {len(failures)} of {len(outcomes)} samples of this request could not be "
                "scored: " + "; ".join(failures[:5])
            )
        return {"rewards": rewards, "scores": list(rewards), "extra_logs": logs, "reasons": reasons}


class _Request:
    def __init__(self, samples, chunk_size, deadline):
        self.samples, self.deadline = samples, deadline
        self.chunks = collections.deque(
            (i, min(i + chunk_size, len(samples))) for i in range(0, len(samples), chunk_size)
        )
        self.outcomes, self.done = [None] * len(samples), 0
        self.future = concurrent.futures.Future()


def _row_diagnostics(result, row: int) -> dict:
    """`ScoreResult.diagnostics()` of one sample, so that each OpenRLHF sample carries its own values."""
    import torch  # lazily: `reward-func-path` only prints a path

    one = {
        f.name: getattr(result, f.name)[row : row + 1]
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)
    }
    return dataclasses.replace(result, **one).diagnostics()


def build_engine(config, **engine_kwargs) -> RewardEngine:
    """Validate `config` (a RewardConfig), load its MOSLIM RM checkpoint into a `Scorer`, wrap it in a `RewardEngine`.

    `config.batch_size`: rows per model call inside one micro-batch. The scorer sorts a micro-batch by length, so
    smaller chunks pad less, which pays on CPU (docs/results.md); on GPU, bigger calls keep the device busy. Default:
    16 on CPU, the micro-batch size on GPU.
    """
    import torch

    from moslim_plugin.core.scorer import Scorer

    expected = config.spec_fingerprint  # what the driver validated; the checkpoint must not have changed since
    config = config.validate()
    if expected and config.spec_fingerprint != expected:
        raise UserError(
            f"the reward model {config.rm_path} has spec fingerprint {config.spec_fingerprint}, but the configuration "
            f"was validated for {expected}: the checkpoint changed, or this machine sees another one at that path"
        )
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"--moslim.device {device!r}: not a torch device; expected e.g. cpu, cuda or cuda:1") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--moslim.device {device!r}: this machine has no CUDA device")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = config.dtype or ("bf16" if str(device).startswith("cuda") else "fp32")
    scorer = Scorer.from_pretrained(
        config.rm_path,
        mapping=config.mapping,
        mapping_kwargs=config.mapping_kwargs,
        device=device,
        dtype=dtypes[dtype],
    )
    scorer.max_length = config.max_length
    scorer.batch_size = config.batch_size or (16 if device == "cpu" else engine_kwargs.get("max_batch_size", 64))
    return RewardEngine(scorer, config, **engine_kwargs)
