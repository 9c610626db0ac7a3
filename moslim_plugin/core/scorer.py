"""Scorer: (question, response, request) triples -> one scalar reward each, plus per-objective diagnostics.

One object used by every reward path (in-process Ray actor, `.py` reward function, HTTP server, demo, evaluation).
It re-tokenises the text with the REWARD MODEL's tokenizer and chat template (the policy's may differ), runs the
multi-head RM in batches, and turns the head probabilities and the requested levels into rewards with a mapping
from `core.mappings`, resolved by name. A running-statistics mapping (`norm="running"`) updates statistics
owned by the scorer, never the model's calibration statistics.

Rule objectives (`rule:` in the spec) are scored in the same call, exactly: the mapping sees each one as a one-hot
distribution at the rule's level, and, where it gets statistics, as an exact classifier calibrated on every level
equally often (`spec_stats`; why: docs/mappings.md, "Rule objectives"). So every mapping works unchanged, and the
`moslim/<objective>/*` diagnostics mean the same for both kinds. A spec of rules only needs no reward model
(`Scorer(None, None, spec=spec)`, or `from_pretrained` of the spec file).

Thread safety: `score` holds a lock for the whole call, so concurrent callers (a server's threads, OpenRLHF's
`asyncio.to_thread` reward calls) run one forward at a time; batch them upstream for throughput.
"""

import itertools
import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from moslim_plugin import UserError
from moslim_plugin.core.directives import validate_request
from moslim_plugin.core.mappings import DEFAULT_MAPPING, MappingStats, parse_mapping_kwargs, resolve_mapping
from moslim_plugin.core.rm import MultiHeadRewardModel, ensure_pad_token, max_positions, saved_spec
from moslim_plugin.core.spec import ObjectiveSpec, SpecError, is_spec_file

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def spell_digits(word: str) -> str:
    """`word` with every digit spelled out, after NFKC (which turns superscript, fullwidth and circled digits into
    ASCII ones; `\\d` then catches every other script's decimal digits): "21." -> "twoone."."""
    return re.sub(r"\d", lambda d: DIGIT_NAMES[unicodedata.digit(d.group(0))], unicodedata.normalize("NFKC", word))


def encode(tokenizer, question: str, response: str, max_length: int, number_words: bool = False) -> dict:
    """Token ids of one (question, response) pair as the reward model reads it, at most `max_length` long.

    With a chat template: a user turn (question) and an assistant turn (response). Without one (encoders such as
    BERT/MiniLM): the tokenizer's own pair encoding, `[CLS] question [SEP] response [SEP]` with token type ids.
    `number_words` (the checkpoint's `moslim.number_words`): see `encode_truncated`. When too long, see there too.
    """
    return encode_truncated(tokenizer, question, response, max_length, number_words)[0]


def encode_truncated(
    tokenizer, question: str, response: str, max_length: int, number_words: bool = False
) -> tuple[dict, bool]:
    """(`encode`'s ids, whether anything was cut). Too long: tokens are dropped from the START of the question first
    (the response is what is being judged, and the end of the question is the part nearest to it); if the response
    alone does not fit, it is kept from its start up to the limit, as OpenRLHF's reward models truncate
    (`truncation=True` cuts the end). Never an error: a long response is a normal event in RL, counted by callers.

    `number_words`: each whitespace-separated word of the response is preceded by its index ("1 Sure, 2 here"),
    whitespace kept. A 6-layer encoder does not learn to count words from a few thousand rows; with indices, "is
    there a word 21" is a token lookup (docs/results.md, "The demo's reward model"). The heads key on the index tokens
    themselves, so the response's own digits are spelled out first ("21" -> "twoone", after NFKC so that no other
    digit form reads as one): every digit the RM reads in a response is an index: a numeral the policy writes is one
    more word, never a word's index. Set at training, saved in the checkpoint (`rm.NUMBERED_WORDS`), applied by every
    scorer of it.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length!r}")
    if number_words:
        index = itertools.count(1)
        response = re.sub(r"\S+", lambda word: f"{next(index)} {spell_digits(word.group(0))}", response)

    def render(q: str, r: str) -> dict:
        if tokenizer.chat_template:
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            return dict(tokenizer(text, add_special_tokens=False))
        return dict(tokenizer(q, r))

    encoded = render(question, response)
    truncated = len(encoded["input_ids"]) > max_length
    for _ in range(64):  # each pass shortens the text; the bound only guards against a tokenizer that never settles
        if len(encoded["input_ids"]) <= max_length:
            return encoded, truncated
        drop = len(encoded["input_ids"]) - max_length
        if question:
            question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
            # Decode/re-encode keeps the real tokenization; each pass strictly shortens the question.
            question = tokenizer.decode(question_ids[drop:]) if drop < len(question_ids) else ""
        else:
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
            if not response_ids:
                break
            response = tokenizer.decode(response_ids[: max(0, len(response_ids) - drop)])
        encoded = render(question, response)
    # The template alone is longer than max_length (or tokenization never settled): cut the ids themselves.
    return {key: value[:max_length] for key, value in encoded.items()}, True


@dataclass
class ScoreResult:
    """Rewards [B] fp32; probs [B, K, Lmax]; expected_level, terms [B, K]; requested [B, K] bool; targets [B, K];
    truncated [B] bool: the pair was longer than the scorer's max_length and was cut (see `encode_truncated`)."""

    names: tuple[str, ...]
    rewards: torch.Tensor
    probs: torch.Tensor
    expected_level: torch.Tensor
    terms: torch.Tensor
    requested: torch.Tensor
    targets: torch.Tensor
    truncated: torch.Tensor | None = None

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


def spec_stats(spec: ObjectiveSpec, head_stats: MappingStats | None) -> MappingStats | None:
    """The statistics a mapping sees for the whole spec: the reward model's (`head_stats`, one row per head, i.e. per
    learned objective) and, for each rule objective, those of an exact classifier on a calibration set holding every
    level equally often: p[t] is 1 for a 1/L share of it, so mean 1/L and std sqrt(L - 1)/L at every level, counted
    as many times as the heads' rows. These equal the per-sample statistics of a one-hot vector, so under the paper's
    mapping a rule's term is the same with and without calibration: sqrt(L - 1) on target, -1/sqrt(L - 1) off it.
    None when `head_stats` is None (the mapping then normalises per sample, or starts running statistics)."""
    if head_stats is None:
        return None
    head_levels = spec.learned_spec().levels
    if head_stats.levels != head_levels:
        raise ValueError(f"statistics for heads of levels {list(head_stats.levels)}, the spec's learned objectives "
                         f"have {list(head_levels)}")  # fmt: skip
    stats = MappingStats.empty(spec.levels)
    for key in ("mean", "std", "count"):
        for row, i in enumerate(spec.learned):
            getattr(stats, key)[i, : head_levels[row]] = getattr(head_stats, key)[row, : head_levels[row]]
    count = head_stats.count.max().item()
    for i, objective in enumerate(spec.objectives):
        if objective.rule is not None:
            n = objective.levels
            stats.mean[i, :n], stats.std[i, :n], stats.count[i, :n] = 1 / n, math.sqrt(n - 1) / n, count
    return stats


class Scorer:
    def __init__(
        self,
        model: MultiHeadRewardModel | None,
        tokenizer,
        mapping=DEFAULT_MAPPING,
        mapping_kwargs=None,
        max_length: int = 512,
        batch_size: int = 32,
        spec: ObjectiveSpec | None = None,
    ):
        """`model`: the multi-head RM, or None (with `spec`, and no tokenizer) when every objective is a rule.
        `spec`: the spec the caller expects (mismatch with the model's: SpecError)."""
        if model is not None and spec is not None:
            model.spec.check_same(spec, "Scorer")
        spec = model.spec if model is not None else spec
        if spec is None:
            raise TypeError("Scorer(None, None, spec=...): without a reward model the spec is required")
        if model is None and spec.learned:
            learned = [spec.names[i] for i in spec.learned]
            raise SpecError(
                f"{spec.source}: objective(s) {learned} are learned, not rules: scoring them needs a MOSLIM "
                "reward-model checkpoint (moslim-openrlhf train-rm)"
            )
        self.model, self.spec = None if model is None else model.eval(), spec
        self.tokenizer = None if tokenizer is None else ensure_pad_token(tokenizer)
        self.mapping = resolve_mapping(mapping)
        self.mapping_kwargs = parse_mapping_kwargs(self.mapping, mapping_kwargs)
        self.max_length, self.batch_size = max_length, batch_size
        self.levels = torch.tensor(spec.levels)
        # The scorer's own copy: running statistics must never change the checkpoint's calibration statistics.
        self.stats = spec_stats(spec, None if model is None else model.stats)
        if self.mapping_kwargs.get("norm") == "running" and self.stats is None:
            self.stats = MappingStats.empty(spec.levels)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, path, mapping=DEFAULT_MAPPING, mapping_kwargs=None, device="cpu", dtype=torch.float32, spec=None, **kw
    ) -> "Scorer":
        """Reward model AND its tokenizer from a MOSLIM checkpoint folder, or a rules-only scorer from a spec file
        whose objectives are all rules. `spec`: the spec the caller expects."""
        if is_spec_file(path):
            rules = saved_spec(path)
            if spec is not None:
                rules.check_same(spec, f"loading reward {path}")
            return cls(None, None, mapping=mapping, mapping_kwargs=mapping_kwargs, spec=rules, **kw)
        if not Path(path, "config.json").is_file():
            # Without this, transformers takes the string for a hub name and fails far from the user's mistake.
            raise UserError(f"reward model {str(path)!r}: not a MOSLIM checkpoint folder (no config.json)")
        model = MultiHeadRewardModel.from_pretrained(path, dtype=dtype, device=device, spec=spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: no tokenizer saved with the reward model ({e}); save it with the model") from e
        # 512 tokens, or the backbone's positions when fewer: a longer pair would fail inside the forward pass.
        limit = max_positions(path)
        kw.setdefault("max_length", min(512, limit or 512))
        if limit and kw["max_length"] > limit:
            raise UserError(
                f"max_length {kw['max_length']} exceeds what the reward model {path} can read (its backbone's "
                f"max_position_embeddings {limit})"
            )
        return cls(model, tokenizer, mapping=mapping, mapping_kwargs=mapping_kwargs, **kw)

    def classify(self, questions: list[str], responses: list[str]) -> torch.Tensor:
        """Level probabilities [B, K, Lmax] of (question, response) pairs, every objective of the spec: the RM's for
        learned ones, one-hot at the exact level for rules. No request, no mapping."""
        return self._probs(questions, responses)[0]

    def _probs(self, questions: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs [B, K, Lmax] of the whole spec, truncated [B] bool: only the RM truncates, rules read everything)."""
        if len(questions) != len(responses):
            raise ValueError(
                f"questions and responses must have the same length, got {len(questions)}, {len(responses)}"
            )
        spec, n = self.spec, len(questions)
        probs = torch.zeros(n, len(spec.names), max(spec.levels))
        truncated = torch.zeros(n, dtype=torch.bool)
        if spec.learned:
            head_probs, truncated = self._forward(questions, responses)
            probs[:, list(spec.learned), : head_probs.shape[-1]] = head_probs
        rows = torch.arange(n)
        with self._lock:  # a custom rule is user code: called from one thread at a time, like the model
            for i, objective in enumerate(spec.objectives):
                if objective.rule is not None:
                    levels = [objective.level(q, r) for q, r in zip(questions, responses)]
                    probs[rows, i, torch.tensor(levels, dtype=torch.long)] = 1.0
        return probs, truncated

    def _forward(self, questions: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs [B, K, Lmax], truncated [B] bool): one batched pass of the reward model, pairs too long cut.
        A pair that repeats (one response scored under several requests) is classified once."""
        pairs = list(zip(questions, responses))
        unique = {pair: i for i, pair in enumerate(dict.fromkeys(pairs))}
        if len(unique) < len(pairs):
            probs, truncated = self._forward(*map(list, zip(*unique)))
            rows = torch.tensor([unique[pair] for pair in pairs])
            return probs[rows], truncated[rows]
        with self._lock:
            words, limit = self.model.number_words, self.max_length
            encoded, truncated = zip(*(encode_truncated(self.tokenizer, q, r, limit, words) for q, r in pairs))
            # Similar lengths in a batch waste less compute on padding.
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
            probs = torch.empty(len(encoded), len(self.model.heads), self.model.max_levels)
            device = next(self.model.parameters()).device
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer.pad([encoded[i] for i in rows], return_tensors="pt")
                with torch.inference_mode():
                    logits = self.model(**{k: v.to(device) for k, v in batch.items()})
                probs[rows] = logits.softmax(-1).cpu()
        return probs, torch.tensor(truncated, dtype=torch.bool)

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
        spec = self.spec
        targets = torch.full((len(requests), len(spec.names)), -1, dtype=torch.long)
        for i, request in enumerate(requests):
            for name, level in validate_request(spec, request).items():
                targets[i, spec.index(name)] = level

        probs, truncated = self._probs(questions, responses)
        with self._lock:
            rewards, terms = self.mapping(probs, targets, self.levels, self.stats, **self.mapping_kwargs)

        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"mapping {getattr(self.mapping, '__name__', self.mapping)!r} returned non-finite rewards for samples "
                f"{bad[:10]} (values {rewards[bad[:10]].tolist()}): refusing to pass them to training"
            )
        expected = (probs * torch.arange(probs.shape[-1], dtype=probs.dtype)).sum(-1)
        return ScoreResult(
            spec.names, rewards.float(), probs, expected, terms.float(), targets >= 0, targets, truncated
        )
