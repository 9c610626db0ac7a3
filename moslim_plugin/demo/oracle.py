"""The demo's objectives and their exact judges: deterministic functions of the response text, no model involved.

The demo needs ground truth that no learned model can fool, so every objective is a property of the text itself:

- `sentences` (3 ordered levels): complete sentences in the response (a `.`, `!` or `?` followed by whitespace or
  the end of the text): at most one / two / three or more.
- `formality` (2 levels): casual if the response uses a contraction (`don't`, `it's`, `you're`, `we'll`, ...; a
  possessive `'s` after a noun is not one), formal otherwise.
- `address` (2 levels): personal if the response speaks to the reader as "you" (`you`, `your`, `yourself`, ...),
  impersonal otherwise.

Why these and not, say, word-count bands, bulleted lists or exclamation marks (the first version of the demo):
RL can only reinforce what the policy samples. Measured on the training prompts (40 new tokens, temperature 1),
SmolLM2-135M-Instruct wrote <= 12 words in 3 % of its answers, a list in 2-5 % and a '!' in 4-8 %, whatever the
directive asked, so a few hundred CPU rollouts held almost no positive examples. The objectives above sit inside
its sampled distribution (264 earlier answers of 40 tokens: 50 / 36 / 13 % over the sentence levels, about half
with a contraction by a looser pattern than the one below, 28 % saying "you") and are just as ignored when
requested, so the starting policy scores about chance and any gain is control that RL added. The oracle labels the
reward model's training data and judges the controllability evaluation; it never gives the policy its reward in
the demo (that goes through the trained reward model, the scorer and the mapping).
"""

import re

from moslim_plugin.core.spec import ObjectiveSpec, load_spec

DEMO_SPEC = {
    "objectives": [
        {
            "name": "sentences",
            "levels": 3,
            "level_names": ["one sentence", "two sentences", "three or more short sentences"],
            "description": "complete sentences in the response: <= 1, 2, >= 3",
            "phrasing": "answer in {level}",
        },
        {
            "name": "formality",
            "levels": 2,
            "level_names": ["formal, without contractions", "casual, with contractions like it's and don't"],
            "description": "casual if the response contains a contraction",
            "phrasing": "sound {level}",
        },
        {
            "name": "address",
            "levels": 2,
            "level_names": ["impersonal, never saying 'you'", "personal, talking to the reader as 'you'"],
            "description": "personal if the response says you / your / yourself",
            "phrasing": "be {level}",
        },
    ]
}

_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")
# n't anywhere; 's / 're / 'll / 've / 'm / 'd only after a pronoun or it/that/there/here/what/who/let, so that a
# possessive ("the body's cells") is not taken for a contraction. Straight and curly apostrophes.
_CONTRACTION_RE = re.compile(
    r"\b(?:\w+n['’]t|(?:i|you|we|they|he|she|it|that|there|here|what|who|let)['’](?:s|re|ll|ve|m|d))\b",
    re.IGNORECASE,
)
_YOU_RE = re.compile(r"\byou(?:r|rs|rself|rselves)?\b", re.IGNORECASE)


def demo_spec() -> ObjectiveSpec:
    spec = load_spec(DEMO_SPEC)
    return ObjectiveSpec(spec.objectives, source="moslim_plugin.demo.oracle:DEMO_SPEC")


def sentences_level(text: str) -> int:
    return min(max(len(_SENTENCE_END_RE.findall(text)) - 1, 0), 2)


def formality_level(text: str) -> int:
    return int(_CONTRACTION_RE.search(text) is not None)


def address_level(text: str) -> int:
    return int(_YOU_RE.search(text) is not None)


JUDGES = {"sentences": sentences_level, "formality": formality_level, "address": address_level}


def judge(text: str, spec: ObjectiveSpec | None = None) -> dict[str, int]:
    """Achieved level of every objective of `spec` (default: the demo spec) for one response."""
    if not isinstance(text, str):
        raise TypeError(f"the oracle judges response text, got {type(text).__name__}: {text!r:.80}")
    spec = spec or demo_spec()
    missing = [name for name in spec.names if name not in JUDGES]
    if missing:
        raise ValueError(
            f"the oracle has no judge for objective(s) {missing} of spec {spec.source}; it judges {sorted(JUDGES)}"
        )
    return {name: JUDGES[name](text) for name in spec.names}


def request_hits(achieved: dict[str, int], request: dict[str, int]) -> float:
    """Share of the requested objectives whose level was hit exactly (1.0 when nothing was requested)."""
    if not request:
        return 1.0
    return sum(achieved[name] == level for name, level in request.items()) / len(request)
