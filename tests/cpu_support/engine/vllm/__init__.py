"""A CPU `vllm`: the engine API OpenRLHF 0.11.2 calls (trainer/ray/vllm_engine.py, vllm_worker_wrap.py,
utils/agent.py, ppo_utils/samples_generator.py), generating with transformers. vLLM itself needs CUDA.

What OpenRLHF sees is vLLM's contract, kept strictly so that a misuse fails here as it would on a GPU:
- `AsyncEngineArgs` takes exactly the keyword arguments OpenRLHF passes (a new one is a TypeError);
- `AsyncLLMEngine.generate` is an async generator of `RequestOutput`s whose first output carries the sampled
  `token_ids` (EOS included, as vLLM does), `text`, `finish_reason` ("stop" / "length") and per-token `logprobs`;
- the worker extension (`worker_extension_cls`, OpenRLHF's WorkerWrap) is mixed into the worker as vLLM does, with
  `model_runner.model.load_weights`, `model_config.dtype`, `device` and torch.distributed initialised (world of 1);
  `collective_rpc` runs its methods, so OpenRLHF's own weight-sync code updates this engine's copy of the model;
- sleep / wake_up: generating while asleep, or loading weights while the weights sleep, raises.
Differences that do not change what OpenRLHF computes: one request at a time (no batching, no KV-cache paging), and
each request draws from its own generator seeded by (engine seed, prompt tokens, how often this engine has seen that
prompt), so a resumed run samples what the uninterrupted one did (vLLM draws from one engine-wide generator).

With MOSLIM_E2E_RECORD=<folder>, each engine appends to <folder>/engine-<pid>.jsonl a line with the sha256 of every
parameter when it loads the model and after each completed weight sync, and one per generation, for the end-to-end
tests' checks. With MOSLIM_E2E_HOLD_AFTER_SYNC=<n>, generation waits forever once the engine has received n weight
syncs (and records a "hold" line): the kill-and-resume test stops the job there, so no later step can complete
before the stop lands, however fast the machine is.
"""

import asyncio
import hashlib
import importlib
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from .inputs import TokensPrompt  # noqa: F401  (vllm.inputs.TokensPrompt, as in vLLM)

# OpenRLHF 0.11.2's `vllm` extra pins 0.29.0; its version checks then take the branches a GPU user's install takes.
__version__ = "0.29.0"
RECORD_ENV = "MOSLIM_E2E_RECORD"
HOLD_ENV = "MOSLIM_E2E_HOLD_AFTER_SYNC"


@dataclass
class SamplingParams:
    """The fields OpenRLHF sets (and the executors read); vLLM's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    skip_special_tokens: bool = True
    logprobs: Optional[int] = None
    seed: Optional[int] = None


@dataclass
class Logprob:
    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: Optional[float]
    logprobs: Optional[list]
    finish_reason: Optional[str] = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list
    outputs: list
    finished: bool = True


@dataclass
class AsyncEngineArgs:
    """Exactly the arguments OpenRLHF's create_vllm_engines passes (vllm_engine.py: actor_kwargs)."""

    model: str
    enforce_eager: bool = False
    worker_extension_cls: str = ""
    tensor_parallel_size: int = 1
    seed: int = 0
    distributed_executor_backend: Optional[str] = None
    max_model_len: Optional[int] = None
    enable_prefix_caching: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False  # OpenRLHF passes True; transformers loads the model here without remote code
    gpu_memory_utilization: float = 0.9  # no GPU memory to budget
    enable_sleep_mode: bool = False
    logprobs_mode: Optional[str] = None
    max_logprobs: int = 20
    limit_mm_per_prompt: dict = field(default_factory=dict)


class _Model:
    """`model_runner.model`: the transformers model and vLLM's `load_weights(weights)` (HF parameter names)."""

    def __init__(self, hf_model):
        self.hf_model = hf_model
        self.params = dict(hf_model.named_parameters(remove_duplicate=False))

    def load_weights(self, weights):
        with torch.no_grad():
            for name, tensor in weights:
                if name not in self.params:
                    raise KeyError(f"load_weights: the engine's model has no parameter {name!r}")
                param = self.params[name]
                if tuple(param.shape) != tuple(tensor.shape):
                    raise ValueError(f"load_weights: {name} has shape {tuple(param.shape)}, got {tuple(tensor.shape)}")
                param.copy_(tensor)


class _Worker:
    """vLLM's GPU worker, as far as the worker extension uses it."""

    def __init__(self, hf_model, dtype):
        self.model_runner = SimpleNamespace(model=_Model(hf_model))
        self.model_config = SimpleNamespace(dtype=dtype)
        self.device = torch.device("cpu")
        if not dist.is_initialized():  # vLLM's worker initialises torch.distributed over its tensor-parallel world
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


class _OutputProcessor:
    def __init__(self):
        self.unfinished = 0

    def get_num_unfinished_requests(self) -> int:
        return self.unfinished


class AsyncLLMEngine:
    def __init__(self, args: AsyncEngineArgs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if args.tensor_parallel_size != 1:
            raise NotImplementedError("the CPU engine runs one worker: --vllm.tensor_parallel_size 1")
        self.args = args
        self.dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16  # OpenRLHF passes "bfloat16"
        self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=self.dtype, attn_implementation="sdpa")
        self.model = model.eval()
        eos = model.generation_config.eos_token_id
        self.stop_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        extension = args.worker_extension_cls
        bases = (_Worker,)
        if extension:
            module, name = extension.rsplit(".", 1)
            bases = (getattr(importlib.import_module(module), name), _Worker)
        self.worker = type("Worker", bases, {})(model, self.dtype)
        self.output_processor = _OutputProcessor()
        self.asleep = set()  # "weights" / "kv_cache" while sleeping
        self.seen = {}  # prompt digest -> requests so far (the per-request seed)
        self.syncs = 0
        self.lock = threading.Lock()  # one forward at a time: generation and weight loading never overlap
        record = os.environ.get(RECORD_ENV)
        self.record_path = os.path.join(record, f"engine-{os.getpid()}.jsonl") if record else None
        self.hold_after = int(os.environ[HOLD_ENV]) if os.environ.get(HOLD_ENV) else None
        self._record(kind="load", sha256=self.weight_digest())

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs) -> "AsyncLLMEngine":
        return cls(engine_args)

    async def is_sleeping(self) -> bool:
        return bool(self.asleep)

    async def sleep(self, level: int = 1):
        if not self.args.enable_sleep_mode:
            raise RuntimeError("sleep() needs the engine built with enable_sleep_mode=True")
        if level == 2:  # level 2 discards the weights: only a later weight sync makes them valid again
            with self.lock:
                for param in self.worker.model_runner.model.params.values():
                    param.data.zero_()
        self.asleep = {"weights", "kv_cache"}

    async def wake_up(self, tags=None):
        self.asleep -= set(tags or ("weights", "kv_cache"))

    async def reset_prefix_cache(self):
        pass  # no prefix cache

    async def pause_generation(self, mode: str = "keep"):
        pass

    async def resume_generation(self):
        pass

    async def collective_rpc(self, method: str, timeout=None, args=(), kwargs=None):
        if method.startswith("update_weight") and "weights" in self.asleep:
            raise RuntimeError(f"{method} while the engine's weights sleep: call wake_up(tags=['weights']) first")
        with self.lock, CudaOnCpu():  # the extension allocates its receive buffer on "cuda": here, the CPU
            result = getattr(self.worker, method)(*args, **(kwargs or {}))
        if method.startswith("update_weight") and (args[3] if len(args) > 3 else (kwargs or {}).get("empty_cache")):
            self.syncs += 1  # OpenRLHF flags the last parameter of a sync with empty_cache=True
            self._record(kind="sync", index=self.syncs, sha256=self.weight_digest())
        return [result]

    def weight_digest(self) -> dict:
        return {name: tensor_sha256(p) for name, p in self.worker.model_runner.model.hf_model.named_parameters()}

    async def generate(self, prompt, sampling_params: SamplingParams, request_id: str, **kwargs):
        if self.asleep:
            raise RuntimeError(f"generate() while the engine sleeps ({sorted(self.asleep)}): call wake_up() first")
        if self.hold_after is not None and self.syncs >= self.hold_after:
            self._record(kind="hold", syncs=self.syncs)
            await asyncio.Event().wait()  # never set: the run stays here until its job is stopped
        prompt_ids = list(prompt["prompt_token_ids"])
        key = hashlib.sha256(json.dumps([self.args.seed, prompt_ids]).encode()).hexdigest()
        occurrence = self.seen[key] = self.seen.get(key, -1) + 1
        seed = sampling_params.seed
        if seed is None:
            seed = int(hashlib.sha256(f"{key}:{occurrence}".encode()).hexdigest()[:15], 16)
        self.output_processor.unfinished += 1
        try:
            output = await asyncio.to_thread(self._generate, prompt_ids, sampling_params, seed)
        finally:
            self.output_processor.unfinished -= 1
        self._record(kind="generate", prompt_token_ids=prompt_ids, token_ids=output.token_ids,
                     finish_reason=output.finish_reason, syncs=self.syncs)  # fmt: skip
        yield RequestOutput(request_id=request_id, prompt_token_ids=prompt_ids, outputs=[output])

    def _generate(self, prompt_ids, params: SamplingParams, seed: int) -> CompletionOutput:
        limit = self.args.max_model_len or self.model.config.max_position_embeddings
        max_tokens = limit - len(prompt_ids) if params.max_tokens is None else params.max_tokens  # vLLM's default
        if len(prompt_ids) + max_tokens > limit:
            raise ValueError(f"{len(prompt_ids)} prompt tokens + max_tokens {max_tokens} exceed max_model_len {limit}")
        generator = torch.Generator().manual_seed(seed)
        tokens, logprobs, finish = [], [], "length"
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
            for step in range(max_tokens):
                logits = out.logits[0, -1].float()
                if step < params.min_tokens:
                    logits[list(self.stop_ids)] = float("-inf")
                token, logprob = sample(logits, params, generator, self.args.logprobs_mode)
                tokens.append(token)
                if params.logprobs is not None:
                    logprobs.append({token: Logprob(logprob, decoded_token=self.tokenizer.decode([token]))})
                if token in self.stop_ids:
                    finish = "stop"
                    break
                cache = out.past_key_values
                out = self.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        text = self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
        cumulative = sum(next(iter(d.values())).logprob for d in logprobs) if logprobs else None
        return CompletionOutput(0, text, tokens, cumulative, logprobs if params.logprobs is not None else None, finish)

    def _record(self, **entry):
        if self.record_path:
            with open(self.record_path, "a") as f:
                f.write(json.dumps(entry) + "\n")


class CudaOnCpu(TorchFunctionMode):
    """Inside it, a "cuda" device argument means the CPU (WorkerWrap allocates its receive buffer on "cuda")."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


def sample(logits, params: SamplingParams, generator, logprobs_mode=None) -> tuple[int, float]:
    """vLLM's sampler for one position: temperature, top-k, top-p, then a draw (greedy at temperature 0)."""
    raw = torch.log_softmax(logits, -1)
    if params.temperature == 0:
        token = int(logits.argmax())
        return token, float(raw[token])
    logits = logits / params.temperature
    if params.top_k and params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, -1) > params.top_p  # keep the token that crosses top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    processed = torch.log_softmax(logits, -1)
    token = int(torch.multinomial(processed.exp(), 1, generator=generator))
    return token, float((processed if logprobs_mode == "processed_logprobs" else raw)[token])


def tensor_sha256(tensor) -> str:
    """sha256 of a tensor's bytes in its own dtype (bf16 stays bf16): equal digests = equal weights."""
    flat = tensor.detach().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()
