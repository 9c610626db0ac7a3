"""The demo's objectives and their exact judges: deterministic functions of the response text, no model involved.

The demo needs ground truth that no learned model can fool, so every objective is a property of the text itself.
`ORACLE_SPEC` holds every objective the oracle can judge (the screening candidates); `DEMO_OBJECTIVES` are the ones
the demo trains, chosen from `moslim-openrlhf screen` on the starting policy (docs/demo/screening.md): each one the
policy already follows somewhat when asked in a plain sentence (conditional gap >= 0.2) and samples at every level,
since RL can only reinforce what the policy samples.

- `length` (3 ordered levels): words in the response (whitespace-separated): <= 20 / 21-32 / > 32. With the demo's
  48 new tokens (about 40 words) the top band means "used the budget"; the bands and sentences were picked from a
  length probe on 24 TRAINING prompts (docs/demo/screening.md), not on the held-out ones.
- `format` (2): a list if at least two lines start with a bullet (`-`, `*`, `•`) or a number (`1.`, `2)`).
- `formality` (2): casual if the response uses a contraction (`don't`, `it's`, `you're`, ...; a possessive `'s`
  after a noun is not one), formal otherwise.
- `exclamation` (2): excited if the response contains a `!`.
- `address` (2): personal if the response speaks to the reader as "you" (`you`, `your`, `yourself`, ...).

The oracle labels the reward model's training data and judges the evaluation; it never gives the policy its reward
in the demo (that goes through the trained reward model, the scorer and the mapping). `length` and `format` can
instead be scored by exact spec rules in the RL (`oracle_spec(rules=...)`, `moslim-openrlhf demo --demo.rules
length,format`): `RULES` writes the same definitions as rules (core/rules.py), whose counting the judges share, so
rule and oracle agree on every text.
"""

import re

from moslim_plugin import UserError
from moslim_plugin.core.rules import count_list_items, count_words
from moslim_plugin.core.spec import ObjectiveSpec, load_spec

LENGTH_BANDS = (20, 32)  # words: level 0 <= 20 < level 1 <= 32 < level 2

ORACLE_OBJECTIVES = [
    {
        "name": "length",
        "levels": 3,
        "level_names": ["one short sentence", "about two sentences", "a detailed answer"],
        "description": f"words in the response: <= {LENGTH_BANDS[0]}, <= {LENGTH_BANDS[1]}, more",
        "phrasing": "answer in {level}",
        "instructions": [
            "Answer in one short sentence of at most ten words.",
            "Answer in about two sentences.",
            "Answer in detail, with at least four sentences.",
        ],
    },
    {
        "name": "format",
        "levels": 2,
        "level_names": ["one paragraph, no list", "a bulleted list"],
        "description": "a list if at least two lines start with a bullet or a number",
        "phrasing": "answer as {level}",
        "instructions": ["Answer in one paragraph without any list.", "Answer as a bulleted list."],
    },
    {
        "name": "formality",
        "levels": 2,
        "level_names": ["formal, without contractions", "casual, with contractions like it's and don't"],
        "description": "casual if the response contains a contraction",
        "phrasing": "sound {level}",
        "instructions": [
            "Write formally and never use contractions.",
            "Write casually and use contractions like it's and don't.",
        ],
    },
    {
        "name": "exclamation",
        "levels": 2,
        "level_names": ["calm, no exclamation marks", "excited, with exclamation marks"],
        "description": "excited if the response contains a '!'",
        "phrasing": "sound {level}",
        "instructions": ["Answer calmly, without exclamation marks.", "Answer with excitement and exclamation marks!"],
    },
    {
        "name": "address",
        "levels": 2,
        "level_names": ["impersonal, never saying 'you'", "personal, talking to the reader as 'you'"],
        "description": "personal if the response says you / your / yourself",
        "phrasing": "be {level}",
        "instructions": [
            "Never use the word 'you' and write impersonally.",
            "Talk directly to me, using the word 'you'.",
        ],
    },
]
DEMO_OBJECTIVES = ("length", "format", "formality")
# The objectives an exact spec rule can score instead of a learned head, with the judges' own definitions.
RULES = {
    "length": {"name": "word_count", "bands": list(LENGTH_BANDS)},
    "format": {"name": "bulleted_list", "min_items": 2},
}
# n't anywhere; 's / 're / 'll / 've / 'm / 'd only after a pronoun or it/that/there/here/what/who/let, so that a
# possessive ("the body's cells") is not taken for a contraction. Straight and curly apostrophes.
_CONTRACTION_RE = re.compile(
    r"\b(?:\w+n['’]t|(?:i|you|we|they|he|she|it|that|there|here|what|who|let)['’](?:s|re|ll|ve|m|d))\b",
    re.IGNORECASE,
)
_YOU_RE = re.compile(r"\byou(?:r|rs|rself|rselves)?\b", re.IGNORECASE)


def oracle_spec(names=None, rules=()) -> ObjectiveSpec:
    """The spec of the named oracle objectives in the given order (default: every one the oracle judges); those in
    `rules` are exact rule objectives (`RULES`), the others learned."""
    by_name = {o["name"]: o for o in ORACLE_OBJECTIVES}
    names = list(by_name) if names is None else list(names)
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise UserError(f"the oracle judges {list(by_name)}; got {names}")
    bad_rules = [n for n in rules if n not in RULES or n not in names]
    if bad_rules:
        raise UserError(f"rules {bad_rules}: a rule can score {[n for n in RULES if n in names]} here")
    spec = load_spec({"objectives": [{**by_name[n], **({"rule": RULES[n]} if n in rules else {})} for n in names]})
    ruled = f" (rules: {','.join(n for n in names if n in rules)})" if rules else ""
    return ObjectiveSpec(spec.objectives, source=f"moslim_plugin.demo.oracle:{','.join(names)}{ruled}")


def demo_spec(rules=()) -> ObjectiveSpec:
    return oracle_spec(DEMO_OBJECTIVES, rules)


def length_level(text: str) -> int:
    return sum(count_words(text) > band for band in LENGTH_BANDS)


def format_level(text: str) -> int:
    return int(count_list_items(text) >= 2)


def formality_level(text: str) -> int:
    return int(_CONTRACTION_RE.search(text) is not None)


def exclamation_level(text: str) -> int:
    return int("!" in text)


def address_level(text: str) -> int:
    return int(_YOU_RE.search(text) is not None)


JUDGES = {
    "length": length_level,
    "format": format_level,
    "formality": formality_level,
    "exclamation": exclamation_level,
    "address": address_level,
}


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
