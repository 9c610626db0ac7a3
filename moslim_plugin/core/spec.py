"""Objective spec: which objectives the reward model classifies, with how many levels, and how a request is phrased.

A spec is a YAML or JSON file (or the same dict) of the form::

    objectives:
      - name: helpfulness            # identifier-like, unique; also the head's name
        levels: 5                    # number of classes, 2 to 32 (levels 0 .. levels-1)
        level_names: [unhelpful, slightly helpful, helpful, very helpful, extremely helpful]  # optional
        description: How well the answer helps the user.   # optional, documentation only
        phrasing: "{level}"          # optional: natural-language part of the tagged directive
        instructions:                # optional: one plain imperative sentence per level (the natural directive)
          - Give an unhelpful answer.
          - ...
        rating: {path: helpfulness, bins: [0.5, 1.5, 2.5, 3.5], range: [0, 4]}   # optional, for the ratings reader
      - name: length
        levels: 3
        rule: {name: word_count, bands: [20, 60]}   # optional: checked exactly by a rule instead of an RM head

`phrasing` is a template with the placeholders `{level}` (level name), `{index}` (level number), `{max}` (highest
level number) and `{name}` (objective name). The directive always carries `name: index/max` for the parser; the
phrasing is the part the policy reads, so it defaults to the level name, or to nothing when the levels have no names.
`instructions` are what the `natural` directive style says (`moslim_plugin/core/directives.py`): the requested levels
sentences joined into a short paragraph, matched back exactly by the parser. So every sentence is non-empty, ends
with `.`, `!` or `?`, and no sentence contains another anywhere in the spec: exact matching is then unambiguous.
`rule` makes an objective exact: its level is computed from the response by a function (`core/rules.py`: built-in
word/sentence-count bands, regex, bulleted list, or your own `module:function`), and no reward-model head is trained
for it. A rule objective has no `rating` (it needs no labels); a spec whose objectives are all rules needs no reward
model at all.
A name bundled with the package (`helpsteer`, `hh`) loads `moslim_plugin/core/specs/<name>.yaml`.

The spec travels inside every reward-model checkpoint and every prepared dataset; `fingerprint` identifies it
independently of key order, defaults written out or not, and where it was loaded from.
"""

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from moslim_plugin import UserError
from moslim_plugin.core.rules import build_rule, check_level

SPECS_DIR = Path(__file__).parent / "specs"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLACEHOLDERS = {"level", "index", "max", "name"}
# These delimit the directive (`[Preferences] a: 1/4 (phrase); b: 0/1 [/Preferences]`), so texts must not contain them.
_FORBIDDEN_CHARS = (";", "[", "]", "\n", "\r")
_OBJECTIVE_KEYS = {"name", "levels", "level_names", "description", "phrasing", "rating", "instructions", "rule"}
# The natural directive for an empty request: also a reserved sentence, so no objective may use or contain it.
NO_PREFERENCE_SENTENCE = "Answer in whatever way suits the question."
_RATING_KEYS = {"path", "bins", "range"}
# Bounds on what a spec may declare (docs/CONTRACT.md): a head per objective and a logit per level are built from
# these numbers, and the directive lists every requested objective, so a typo such as `levels: 1000000` must stop
# here, not as an out-of-memory error or an unreadable prompt. The largest real scales seen are 10-point ratings.
MAX_LEVELS = 32
MAX_OBJECTIVES = 32
MAX_SPEC_BYTES = 1 << 20  # 1 MiB: far above any spec with instructions for 32 x 32 levels


class SpecError(UserError):
    """Invalid objective spec; the message names the file, the field and the bad value."""


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a key written twice is an error (PyYAML silently keeps the last one), and so is an
    alias (`*name`): a spec needs none, and nested aliases expand a small file into gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in a spec", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
        if dupes:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key(s) {dupes}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _check_text(field: str, value) -> None:
    if not isinstance(value, str):
        raise ValueError(f"field {field!r}: expected a string, got {value!r}")
    bad = [c for c in _FORBIDDEN_CHARS if c in value]
    if bad:
        raise ValueError(f"field {field!r}: {value!r} contains {bad!r}, which delimit the directive")


@dataclass(frozen=True)
class Objective:
    name: str
    levels: int
    level_names: tuple[str, ...]
    phrasing: str
    rating: dict | None = None
    description: str = ""
    instructions: tuple[str, ...] = ()
    rule: dict | None = None  # canonical `{"name": ..., **params}` (core/rules.py), None for a learned objective
    _level_fn: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        # The one place objectives are validated; ObjectiveSpec.from_dict adds the file and index to the message.
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"field 'name': expected an identifier like 'helpfulness', got {self.name!r}")
        if not _is_int(self.levels) or not 2 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"field 'levels': expected an integer in [2, {MAX_LEVELS}], got {self.levels!r}")
        if not isinstance(self.level_names, tuple) or len(self.level_names) != self.levels:
            raise ValueError(f"field 'level_names': expected {self.levels} names, got {self.level_names!r}")
        for i, level_name in enumerate(self.level_names):
            _check_text(f"level_names[{i}]", level_name)
            if not level_name.strip():
                raise ValueError(f"field 'level_names[{i}]': expected a non-empty name, got {level_name!r}")
        if len(set(self.level_names)) != self.levels:
            raise ValueError(f"field 'level_names': names must be unique, got {list(self.level_names)!r}")
        _check_text("phrasing", self.phrasing)
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.phrasing) if f is not None}
        except ValueError as e:
            raise ValueError(f"field 'phrasing': {self.phrasing!r} is not a valid template ({e})") from None
        if fields - _PLACEHOLDERS:
            raise ValueError(
                f"field 'phrasing': unknown placeholder(s) {sorted(fields - _PLACEHOLDERS)} in {self.phrasing!r}; "
                f"allowed: {sorted(_PLACEHOLDERS)}"
            )
        for index in range(self.levels):
            _check_text("phrasing", self.phrase(index))  # a level name must not smuggle a delimiter in either
        if not isinstance(self.description, str):
            raise ValueError(f"field 'description': expected a string, got {self.description!r}")
        if self.rating is not None:
            self._check_rating()
        if self.instructions != ():
            self._check_instructions()
        if self.rule is not None:
            if self.rating is not None:
                raise ValueError("fields 'rule' and 'rating': a rule objective is checked exactly and has no rating")
            try:
                rule, level_fn = build_rule(self.rule, self.levels)
            except ValueError as e:
                raise ValueError(f"field 'rule': {e}") from None
            object.__setattr__(self, "rule", rule)
            object.__setattr__(self, "_level_fn", level_fn)

    def level(self, question: str, response: str) -> int:
        """The exact level of a rule objective for one (question, response); ValueError if the rule misbehaves."""
        if self.rule is None:
            raise TypeError(f"objective {self.name!r} is learned (a reward-model head), not a rule")
        return check_level(self._level_fn(question, response), self.levels, self.name, self.rule["name"])

    def _check_instructions(self) -> None:
        sentences = self.instructions
        if not isinstance(sentences, tuple) or len(sentences) != self.levels:
            raise ValueError(
                f"field 'instructions': expected {self.levels} sentences (one per level), got {sentences!r}"
            )
        for i, sentence in enumerate(sentences):
            _check_text(f"instructions[{i}]", sentence)
            if sentence != sentence.strip() or not sentence or sentence[-1] not in ".!?":
                raise ValueError(
                    f"field 'instructions[{i}]': expected one non-empty sentence ending with '.', '!' or '?' and no "
                    f"surrounding spaces, got {sentence!r}"
                )

    def _check_rating(self) -> None:
        rating = self.rating
        if not isinstance(rating, dict):
            raise ValueError(f"field 'rating': expected a mapping with 'path', 'range' and/or 'bins', got {rating!r}")
        unknown = set(rating) - _RATING_KEYS
        if unknown:
            raise ValueError(f"field 'rating': unknown key(s) {sorted(unknown)}; allowed: {sorted(_RATING_KEYS)}")
        path = rating.get("path", self.name)
        if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
            raise ValueError(f"field 'rating.path': expected a dotted path like 'scores.helpfulness', got {path!r}")
        # Without bins a rating must be an integer and level = rating - lowest rating (see data/ratings.py).
        bins = rating.get("bins")
        if bins is not None and (
            not isinstance(bins, list)
            or len(bins) != self.levels - 1
            or not all(_is_number(b) for b in bins)
            or any(a >= b for a, b in zip(bins, bins[1:]))
        ):
            raise ValueError(
                f"field 'rating.bins': expected {self.levels - 1} strictly ascending numbers (levels - 1 thresholds), "
                f"got {bins!r}"
            )
        if "range" in rating:
            rng = rating["range"]
            if not isinstance(rng, list) or len(rng) != 2 or not all(_is_number(x) for x in rng) or rng[0] >= rng[1]:
                raise ValueError(f"field 'rating.range': expected [lo, hi] with lo < hi, got {rng!r}")
            if bins is not None and not (rng[0] <= bins[0] and bins[-1] <= rng[1]):
                raise ValueError(f"field 'rating.bins': thresholds {bins!r} must lie inside range {rng!r}")
            if bins is None and (not all(_is_int(x) for x in rng) or rng[1] - rng[0] + 1 != self.levels):
                raise ValueError(
                    f"field 'rating.range': without 'rating.bins' the range must hold exactly {self.levels} integers "
                    f"(one per level), got {rng!r}; add 'rating.bins' to bin a wider or continuous scale"
                )

    def phrase(self, index: int) -> str:
        """The natural-language part of the directive for level `index` ('' when the phrasing is empty)."""
        return self.phrasing.format(level=self.level_names[index], index=index, max=self.levels - 1, name=self.name)

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "levels": self.levels,
            "level_names": list(self.level_names),
            "description": self.description,
            "phrasing": self.phrasing,
        }
        if self.rating is not None:
            d["rating"] = {k: (list(v) if isinstance(v, list) else v) for k, v in self.rating.items()}
        if self.instructions:  # only when given: specs without them keep their fingerprint
            d["instructions"] = list(self.instructions)
        if self.rule is not None:  # the same: specs without rules keep their fingerprint
            d["rule"] = dict(self.rule)
        return d


@dataclass(frozen=True)
class ObjectiveSpec:
    objectives: tuple[Objective, ...]
    source: str = "<dict>"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(o.levels for o in self.objectives)

    @property
    def learned(self) -> tuple[int, ...]:
        """Indices of the learned objectives (no rule), in spec order: one reward-model head each."""
        return tuple(i for i, o in enumerate(self.objectives) if o.rule is None)

    def learned_spec(self) -> "ObjectiveSpec":
        """The learned objectives alone, in spec order: what the reward model's heads classify and train-rm trains."""
        if not self.learned:
            raise SpecError(
                f"{self.source}: every objective is a rule, so there is no reward-model head to build or train; "
                "score with the spec alone (Scorer(None, None, spec=spec), or the spec file as the reward model path)"
            )
        return ObjectiveSpec(tuple(self.objectives[i] for i in self.learned), f"{self.source} (learned objectives)")

    @property
    def has_instructions(self) -> bool:
        return all(o.instructions for o in self.objectives)

    def index(self, name: str) -> int:
        for i, o in enumerate(self.objectives):
            if o.name == name:
                return i
        raise SpecError(f"{self.source}: unknown objective {name!r}; the spec has {list(self.names)}")

    def to_dict(self) -> dict:
        return {"objectives": [o.to_dict() for o in self.objectives]}

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def check_same(self, other: "ObjectiveSpec", what: str) -> None:
        """Raise SpecError if `other` (e.g. the dataset's spec) differs from this one (e.g. the checkpoint's)."""
        if self.fingerprint == other.fingerprint:
            return
        mine, theirs = dict(zip(self.names, self.levels)), dict(zip(other.names, other.levels))
        same = "same objectives, other names/phrasing/rules"
        detail = f"objectives/levels {mine} vs {theirs}" if mine != theirs else same
        raise SpecError(
            f"{what}: objective spec mismatch: {self.source} (fingerprint {self.fingerprint}) vs {other.source} "
            f"(fingerprint {other.fingerprint}); {detail}"
        )

    @classmethod
    def from_dict(cls, d, source: str = "<dict>") -> "ObjectiveSpec":
        if not isinstance(d, dict):
            raise SpecError(f"{source}: expected a mapping with key 'objectives', got {type(d).__name__}: {d!r:.80}")
        if set(d) != {"objectives"}:
            extra = sorted(set(d) - {"objectives"})
            raise SpecError(
                f"{source}: unknown top-level key(s) {extra}" if extra else f"{source}: missing field 'objectives'"
            )
        raw = d["objectives"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_OBJECTIVES:
            got = f"{len(raw)} objectives" if isinstance(raw, list) and raw else f"{raw!r:.80}"
            raise SpecError(f"{source}: field 'objectives': expected a list of 1 to {MAX_OBJECTIVES}, got {got}")
        objectives = []
        for i, o in enumerate(raw):
            where = f"{source}: objectives[{i}]"
            if not isinstance(o, dict):
                raise SpecError(f"{where}: expected a mapping with 'name' and 'levels', got {o!r:.80}")
            where += f" ({o.get('name')!r})" if "name" in o else ""
            unknown = set(o) - _OBJECTIVE_KEYS
            if unknown:
                raise SpecError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_OBJECTIVE_KEYS)}")
            for key in ("name", "levels"):
                if key not in o:
                    raise SpecError(f"{where}: missing field {key!r}")
            levels = o["levels"]
            names = o.get("level_names")
            if names is None and _is_int(levels) and levels <= MAX_LEVELS:  # else Objective names the bad count
                names = [str(i) for i in range(levels)]
            try:
                objectives.append(
                    Objective(
                        name=o["name"],
                        levels=levels,
                        level_names=tuple(names) if isinstance(names, list) else names,
                        # Unnamed levels would read "(3)" next to "3/4": say nothing rather than repeat the number.
                        phrasing=o.get("phrasing", "{level}" if "level_names" in o else ""),
                        rating=o.get("rating"),
                        description=o.get("description", ""),
                        instructions=tuple(o["instructions"])
                        if isinstance(o.get("instructions"), list)
                        else o.get("instructions", ()),
                        rule=o.get("rule"),
                    )
                )
            except ValueError as e:
                raise SpecError(f"{where}: {e}") from None
        names = [o.name for o in objectives]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"{source}: field 'objectives': duplicate name(s) {dupes}; names must be unique")
        _check_sentences_distinct(objectives, source)
        return cls(tuple(objectives), source)


def _check_sentences_distinct(objectives, source: str) -> None:
    """No instruction sentence may contain another (nor the no-preference sentence) anywhere in the spec, so the
    parser reads every natural directive back to exactly one request."""
    owners = [(s, f"{o.name}.instructions[{i}]") for o in objectives for i, s in enumerate(o.instructions)]
    owners.append((NO_PREFERENCE_SENTENCE, "the no-preference sentence"))
    for a, where_a in owners:
        for b, where_b in owners:
            if where_a != where_b and b in a:
                raise SpecError(
                    f"{source}: {where_a} {a!r} "
                    + ("repeats" if a == b else "contains")
                    + f" {where_b} {b!r}; every sentence must be distinct and not part of another, so that a "
                    "natural directive parses to exactly one request"
                )


def is_spec_file(path) -> bool:
    """A YAML or JSON file: where a reward model is expected, the weightless reward of a spec of rules only."""
    return Path(path).suffix in (".yaml", ".yml", ".json") and Path(path).is_file()


def load_spec(path_or_dict) -> ObjectiveSpec:
    """Load and validate a spec from a YAML/JSON file, a bundled spec name or a dict (an ObjectiveSpec passes)."""
    if isinstance(path_or_dict, ObjectiveSpec):
        return path_or_dict
    if isinstance(path_or_dict, dict):
        return ObjectiveSpec.from_dict(path_or_dict)
    if not isinstance(path_or_dict, (str, Path)):
        raise SpecError(f"expected a spec file path, a bundled spec name or a dict, got {path_or_dict!r:.80}")
    path = Path(path_or_dict)
    if not path.exists() and _NAME_RE.match(str(path_or_dict)) and (SPECS_DIR / f"{path_or_dict}.yaml").exists():
        path = SPECS_DIR / f"{path_or_dict}.yaml"
    if not path.is_file():
        bundled = sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))
        raise SpecError(f"{path_or_dict}: no such spec file (bundled spec names: {bundled})")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {size} bytes, more than a spec may hold ({MAX_SPEC_BYTES} bytes)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError(f"{path}: not UTF-8 text (line {line}: {e.reason}); save the spec as UTF-8") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_StrictLoader)
        else:
            raise SpecError(f"{path}: unknown spec file type {path.suffix!r}; expected .yaml, .yml or .json")
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    return ObjectiveSpec.from_dict(data, source=str(path))
