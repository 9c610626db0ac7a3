"""Scorer: (question, response, request) triples -> one scalar reward each, plus per-objective diagnostics.

One object used by every reward path (in-process Ray actor, `.py` reward function, HTTP server, demo, evaluation).
It re-tokenises the text with the REWARD MODEL's tokenizer and chat template (the policy's may differ), runs the
multi-head RM in batches, and turns the head probabilities and the requested levels into rewards with a mapping
from `core.mappings`, resolved by name. A running-statistics mapping (`norm="running"`) updates statistics
owned by the scorer, never the model's calibration statistics.

Thread safety: `score` holds a lock for the whole call, so concurrent callers (a server's threads, OpenRLHF's
`asyncio.to_thread` reward calls) run one forward at a time; batch them upstream for throughput.
"""

import copy
import threading
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer

from moslim_plugin.core.directives import validate_request
from moslim_plugin.core.mappings import DEFAULT_MAPPING, MappingStats, parse_mapping_kwargs, resolve_mapping
from moslim_plugin.core.rm import MultiHeadRewardModel


def encode(tokenizer, question: str, response: str, max_length: int) -> dict:
    """Token ids of one (question, response) pair as the reward model reads it, at most `max_length` long.

    With a chat template: a user turn (question) and an assistant turn (response). Without one (encoders such as
    BERT/MiniLM): the tokenizer's own pair encoding, `[CLS] question [SEP] response [SEP]` with token type ids.
    When too long, tokens are dropped from the START of the question (the response is what is being judged, and
    the end of the question is the part nearest to it); a response that alone does not fit is an error.
    """

    def render(q: str) -> dict:
        if tokenizer.chat_template:
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": response}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            return dict(tokenizer(text, add_special_tokens=False))
        return dict(tokenizer(q, response))

    encoded = render(question)
    while len(encoded["input_ids"]) > max_length:
        question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        drop = len(encoded["input_ids"]) - max_length
        if drop >= len(question_ids):
            if not question:
                raise ValueError(
                    f"response alone is {len(encoded['input_ids'])} tokens with the reward model's template, more "
                    f"than max_length={max_length}: raise max_length (or cap the policy's generation length)"
                )
            question = ""
        else:
            # Decode/re-encode keeps the real tokenization; each pass strictly shortens the question.
            question = tokenizer.decode(question_ids[drop:])
        encoded = render(question)
    return encoded


@dataclass
class ScoreResult:
    """Rewards [B] fp32; probs [B, K, Lmax]; expected_level, terms [B, K]; requested [B, K] bool; targets [B, K]."""

    names: tuple[str, ...]
    rewards: torch.Tensor
    probs: torch.Tensor
    expected_level: torch.Tensor
    terms: torch.Tensor
    requested: torch.Tensor
    targets: torch.Tensor

    def diagnostics(self) -> dict[str, float]:
        """Per objective, over the samples that requested it: mean p(target), argmax hit rate, mean term."""
        out = {}
        hits = self.probs.argmax(-1) == self.targets
        p_target = self.probs.gather(-1, self.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        for k, name in enumerate(self.names):
            rows = self.requested[:, k]
            if not rows.any():
                continue  # no sample asked for this objective: no value rather than a NaN
            out[f"moslim/{name}/p_target"] = p_target[rows, k].mean().item()
            out[f"moslim/{name}/hit"] = hits[rows, k].float().mean().item()
            out[f"moslim/{name}/term"] = self.terms[rows, k].mean().item()
        return out


class Scorer:
    def __init__(
        self,
        model: MultiHeadRewardModel,
        tokenizer,
        mapping=DEFAULT_MAPPING,
        mapping_kwargs=None,
        max_length: int = 512,
        batch_size: int = 32,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            # The pad id's value never matters (pad positions are masked and not pooled); OpenRLHF does the same.
            if tokenizer.eos_token is None:
                raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        self.mapping = resolve_mapping(mapping)
        self.mapping_kwargs = parse_mapping_kwargs(self.mapping, mapping_kwargs)
        self.max_length, self.batch_size = max_length, batch_size
        spec = model.spec
        self.levels = torch.tensor(spec.levels)
        # The scorer's own copy: running statistics must never change the checkpoint's calibration statistics.
        self.stats = copy.deepcopy(model.stats)
        if self.mapping_kwargs.get("norm") == "running" and self.stats is None:
            self.stats = MappingStats.empty(spec.levels)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, path, mapping=DEFAULT_MAPPING, mapping_kwargs=None, device="cpu", dtype=torch.float32, spec=None, **kw
    ) -> "Scorer":
        """Reward model AND its tokenizer from a MOSLIM checkpoint folder. `spec`: the spec the caller expects."""
        model = MultiHeadRewardModel.from_pretrained(path, dtype=dtype, device=device, spec=spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: no tokenizer saved with the reward model ({e}); save it with the model") from e
        return cls(model, tokenizer, mapping=mapping, mapping_kwargs=mapping_kwargs, **kw)

    def classify(self, questions: list[str], responses: list[str]) -> torch.Tensor:
        """Per-head level probabilities [B, K, Lmax] of (question, response) pairs: no request, no mapping."""
        if len(questions) != len(responses):
            raise ValueError(
                f"questions and responses must have the same length, got {len(questions)}, {len(responses)}"
            )
        with self._lock:
            encoded = [encode(self.tokenizer, q, r, self.max_length) for q, r in zip(questions, responses)]
            # Similar lengths in a batch waste less compute on padding.
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
            probs = torch.empty(len(encoded), len(self.model.spec.names), self.model.max_levels)
            device = next(self.model.parameters()).device
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer.pad([encoded[i] for i in rows], return_tensors="pt")
                with torch.inference_mode():
                    logits = self.model(**{k: v.to(device) for k, v in batch.items()})
                probs[rows] = logits.softmax(-1).cpu()
        return probs

    def score(self, questions: list[str], responses: list[str], requests: list[dict[str, int]]) -> ScoreResult:
        if not (len(questions) == len(responses) == len(requests)):
            raise ValueError(
                f"questions, responses and requests must have the same length, got "
                f"{len(questions)}, {len(responses)}, {len(requests)}"
            )
        if not questions:
            raise ValueError("nothing to score: empty batch")
        for what, texts in (("questions", questions), ("responses", responses)):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"{what}[{i}] must be a string, got {type(text).__name__}: {text!r:.80}")
        spec = self.model.spec
        targets = torch.full((len(requests), len(spec.names)), -1, dtype=torch.long)
        for i, request in enumerate(requests):
            for name, level in validate_request(spec, request).items():
                targets[i, spec.index(name)] = level

        probs = self.classify(questions, responses)
        with self._lock:
            rewards, terms = self.mapping(probs, targets, self.levels, self.stats, **self.mapping_kwargs)

        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"mapping {getattr(self.mapping, '__name__', self.mapping)!r} returned non-finite rewards for samples "
                f"{bad[:10]} (values {rewards[bad[:10]].tolist()}): refusing to pass them to training"
            )
        expected = (probs * torch.arange(probs.shape[-1], dtype=probs.dtype)).sum(-1)
        return ScoreResult(spec.names, rewards.float(), probs, expected, terms.float(), targets >= 0, targets)
