"""Rule objectives: an objective whose level is read off the response exactly, by a function, not by an RM head.

An objective of the spec may declare `rule:` instead of being learned (`moslim_plugin/core/spec.py`)::

    - name: length
      levels: 3
      rule: {name: word_count, bands: [20, 32]}       # level 0: <= 20 words, 1: 21-32, 2: more
    - name: format
      levels: 2
      rule: bulleted_list                             # a name alone: the rule with its defaults
    - name: cites_source
      levels: 2
      rule: {name: regex, pattern: "(?i)\\bsource:"}  # 1 when the pattern occurs in the response, else 0
    - name: politeness
      levels: 3
      rule: {name: "my_package.rules:politeness", threshold: 2}   # your own function, with its keyword arguments

Built-in rules (they read the response only):

- `word_count(bands)`: words = whitespace-separated tokens; level = how many of the ascending `bands` the count
  exceeds (`levels - 1` of them). A numeral is one word like any other, so "21" in a short answer cannot pass for
  a long one, which is how the demo's learned length head was fooled (docs/rules.md).
- `sentence_count(bands)`: sentences end at `.`, `!` or `?` followed by whitespace or the end, and at line breaks;
  list markers (`-`, `*`, `•`, `1.`, `2)`) at a line start are not sentences, a piece without a letter or digit is
  none; `3.5` does not end one. Same bands as `word_count`.
- `regex(pattern)`: 2 levels, 1 when `re.search(pattern, response)` finds it (inline flags such as `(?i)` work).
  For "must not contain", request level 0.
- `bulleted_list(min_items=2)`: 2 levels, 1 when at least `min_items` lines start with a bullet (`-`, `*`, `•`) or
  a number (`1.`, `2)`) followed by text.

A custom rule is found like a mapping function: a built-in name, an entry point of the group `moslim_plugin.rules`,
or `module:function`. It is called as `fn(question, response, **params)` with the rule's other keys as `params`, and
returns an integer level in `0 .. levels - 1`; anything else stops scoring with an error naming the objective.
"""

import functools
import importlib
import inspect
import json
import operator
import re
from collections.abc import Callable
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "moslim_plugin.rules"
LevelFn = Callable[[str, str], int]

_WORD_RE = re.compile(r"\S+")
_LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
_LIST_MARKER_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|\Z)|\n")
_ALNUM_RE = re.compile(r"[^\W_]")


def count_words(text: str) -> int:
    return len(_WORD_RE.findall(text))


def count_sentences(text: str) -> int:
    pieces = _SENTENCE_END_RE.split(_LIST_MARKER_RE.sub("", text))
    return sum(_ALNUM_RE.search(piece) is not None for piece in pieces)


def count_list_items(text: str) -> int:
    return len(_LIST_ITEM_RE.findall(text))


def _check_bands(bands, levels: int, unit: str) -> tuple[int, ...]:
    if (
        not isinstance(bands, (list, tuple))
        or len(bands) != levels - 1
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bands)
        or any(a >= b for a, b in zip(bands, bands[1:]))
    ):
        raise ValueError(
            f"'bands': expected {levels - 1} strictly ascending {unit} counts >= 0 for {levels} levels (level i: "
            f"more than bands[i-1], at most bands[i]), got {bands!r}"
        )
    return tuple(bands)


def _check_two_levels(levels: int) -> None:
    if levels != 2:
        raise ValueError(f"this rule has 2 levels (0: no, 1: yes), but the objective has {levels}")


def word_count(levels: int, *, bands) -> LevelFn:
    bands = _check_bands(bands, levels, "word")
    return lambda question, response: sum(count_words(response) > b for b in bands)


def sentence_count(levels: int, *, bands) -> LevelFn:
    bands = _check_bands(bands, levels, "sentence")
    return lambda question, response: sum(count_sentences(response) > b for b in bands)


def regex(levels: int, *, pattern) -> LevelFn:
    _check_two_levels(levels)
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"'pattern': expected a non-empty regular expression, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"'pattern': {pattern!r} is not a valid regular expression ({e})") from None
    return lambda question, response: int(compiled.search(response) is not None)


def bulleted_list(levels: int, *, min_items=2) -> LevelFn:
    _check_two_levels(levels)
    if not isinstance(min_items, int) or isinstance(min_items, bool) or min_items < 1:
        raise ValueError(f"'min_items': expected an integer >= 1, got {min_items!r}")
    return lambda question, response: int(count_list_items(response) >= min_items)


# name -> factory(levels, **params) -> level function; the factory checks the parameters against the levels.
BUILTIN_RULES = {
    "word_count": word_count,
    "sentence_count": sentence_count,
    "regex": regex,
    "bulleted_list": bulleted_list,
}


def _installed() -> str:
    plugins = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return f"built-in: {sorted(BUILTIN_RULES)}; entry points ({ENTRY_POINT_GROUP}): {plugins}; or 'module:function'"


def _find_custom(name: str):
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if found:
        return found[0].load()
    if ":" not in name:
        raise ValueError(f"unknown rule {name!r}; installed: {_installed()}")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"rule {name!r}: cannot import module {module_name!r} ({e})") from None
    if not callable(getattr(module, attr, None)):
        raise ValueError(f"rule {name!r}: module {module_name!r} has no function {attr!r}")
    return getattr(module, attr)


def build_rule(rule, levels: int) -> tuple[dict, LevelFn]:
    """(the canonical rule entry, the level function) of a spec's `rule:` value for an objective with `levels`.
    Canonical: `{"name": ..., **params}` with the built-ins' defaults written out, so that the spec fingerprint
    does not depend on how the rule was written. ValueError naming what is wrong (the spec adds the objective)."""
    if isinstance(rule, str):
        rule = {"name": rule}
    if not isinstance(rule, dict) or not isinstance(rule.get("name"), str) or not rule["name"]:
        raise ValueError(
            f"expected a rule name or a mapping {{name: RULE, <parameters>}}, got {rule!r}; rules: {_installed()}"
        )
    name, params = rule["name"], {k: v for k, v in rule.items() if k != "name"}
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"rule {name!r}: parameters must be plain JSON values, got {params!r}") from None
    factory = BUILTIN_RULES.get(name)
    fn = factory if factory is not None else _find_custom(name)
    signature = inspect.signature(fn)
    try:
        bound = signature.bind(levels, **params) if factory else signature.bind("question", "response", **params)
    except TypeError as e:
        accepted = [p.name for p in list(signature.parameters.values())[1 if factory else 2 :]]
        raise ValueError(f"rule {name!r} takes the parameters {accepted}, got {sorted(params)} ({e})") from None
    if factory is None:
        return {"name": name, **params}, functools.partial(fn, **params)
    bound.apply_defaults()
    try:
        level_fn = factory(levels, **params)
    except ValueError as e:
        raise ValueError(f"rule {name!r}: {e}") from None
    return {"name": name, **{k: v for k, v in bound.arguments.items() if k != "levels"}}, level_fn


def check_level(value, levels: int, objective: str, rule: str) -> int:
    """A rule's return value as a level, or ValueError naming the objective: a bad rule must stop the reward, never
    turn into a silent 0."""
    try:
        level = operator.index(value)
    except TypeError:
        level = None
    if level is None or not 0 <= level < levels:
        raise ValueError(
            f"objective {objective!r}: rule {rule!r} returned {value!r}; expected an integer level 0..{levels - 1}"
        )
    return level
