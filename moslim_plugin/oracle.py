"""The demo's objectives and their exact judges: deterministic functions of the response text, no model involved.

The demo needs ground truth that no learned model can fool, so every objective is a property of the text itself:

- `length` (3 ordered levels): words in the response, <= 12 short / 13..24 medium / > 24 long.
- `format` (2 levels): a list (at least two lines starting with a bullet `-`, `*`, `•` or a number `1.` / `2)`)
  or plain prose.
- `excitement` (2 levels): whether the response contains an exclamation mark.

SmolLM2-135M-Instruct hits every level now and then on its own (it sometimes answers in one line, sometimes lists
tips, sometimes exclaims) but does not do so on request: the exploration RL needs, and the control it lacks.
The oracle labels the reward model's training data and judges the controllability evaluation; it never gives the
policy its reward in the demo (that goes through the trained reward model, the scorer and the mapping).
"""

import re

from moslim_plugin.spec import ObjectiveSpec, load_spec

SHORT_MAX_WORDS, MEDIUM_MAX_WORDS = 12, 24
MIN_LIST_ITEMS = 2

DEMO_SPEC = {
    "objectives": [
        {
            "name": "length",
            "levels": 3,
            "level_names": ["one short sentence", "a few sentences", "a long detailed answer"],
            "description": f"words in the response: <= {SHORT_MAX_WORDS}, <= {MEDIUM_MAX_WORDS}, more",
            "phrasing": "answer in {level}",
        },
        {
            "name": "format",
            "levels": 2,
            "level_names": ["plain prose", "a bulleted list"],
            "description": f"a list has >= {MIN_LIST_ITEMS} lines starting with a bullet or a number",
            "phrasing": "write {level}",
        },
        {
            "name": "excitement",
            "levels": 2,
            "level_names": ["calm, no exclamation marks", "enthusiastic, with exclamation marks!"],
            "description": "whether the response contains '!'",
            "phrasing": "sound {level}",
        },
    ]
}

_LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+\S")


def demo_spec() -> ObjectiveSpec:
    spec = load_spec(DEMO_SPEC)
    return ObjectiveSpec(spec.objectives, source="moslim_plugin.oracle:DEMO_SPEC")


def length_level(text: str) -> int:
    words = len(text.split())
    return 0 if words <= SHORT_MAX_WORDS else 1 if words <= MEDIUM_MAX_WORDS else 2


def format_level(text: str) -> int:
    items = sum(bool(_LIST_ITEM_RE.match(line)) for line in text.splitlines())
    return int(items >= MIN_LIST_ITEMS)


def excitement_level(text: str) -> int:
    return int("!" in text)


JUDGES = {"length": length_level, "format": format_level, "excitement": excitement_level}


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
