"""Prompt conditioning: give every prompt a preference directive and a MOSLIM label.

`TargetSampler` picks the requested target levels of a row as a pure function of (seed, row index), so the offline
`moslim-openrlhf prepare-prompts` command and the OpenRLHF dataset hook (which calls `condition_row` on each raw row)
produce the same prompts for the same seed. A row that already carries a MOSLIM label passes through unchanged.

    moslim-openrlhf prepare-prompts --data.dataset prompts.jsonl --data.input_key question \
        --moslim.spec spec.yaml --moslim.sampling subset --moslim.output conditioned.jsonl

`--moslim.style` picks how the directive reads (core/directives.py): `natural` sentences from the spec's
`instructions` (the default) or the `tagged` record. The label is the same either way and stays the source of
truth for every reward.
"""

import argparse
import collections
import gzip
import os
import random
from types import SimpleNamespace

from moslim_plugin import UserError, integer, positive_int, writable
from moslim_plugin.core.directives import (
    DEFAULT_PLACEMENT,
    DEFAULT_STYLE,
    PLACEMENTS,
    STYLES,
    DirectiveError,
    apply_directive,
    check_label_matches_directive,
    label_to_request,
    request_to_label,
    validate_request,
)
from moslim_plugin.core.spec import load_spec

SAMPLING_MODES = ("uniform", "subset", "single", "fixed", "column")
FILE_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".arrow")


def check_request(spec, request: dict, where: str) -> dict[str, int]:
    """Targets must be levels of the spec's objectives, and a conditioned prompt must request at least one."""
    try:
        request = validate_request(spec, request)
    except DirectiveError as e:
        raise UserError(f"{where}: {e}") from None
    if not request:
        raise UserError(f"{where}: no objective is requested; at least one target is needed")
    return request


def parse_assignments(text: str, flag: str) -> dict[str, str]:
    """`a=3,b=1` -> {"a": "3", "b": "1"}; a bare `a` maps to itself (used for column names)."""
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key.strip() in pairs:  # a dict would keep the later value without a word
            raise UserError(f"{flag} {text!r}: {key.strip()!r} is named twice; name each objective once")
        pairs[key.strip()] = value.strip() or key.strip()
    if not pairs:
        raise UserError(f"{flag} {text!r}: expected comma-separated name=value pairs")
    return pairs


def parse_fixed(text: str) -> dict[str, int]:
    """`--moslim.fixed helpfulness=3,verbosity=1` -> {"helpfulness": 3, "verbosity": 1}."""
    try:
        return {name: int(level) for name, level in parse_assignments(text, "--moslim.fixed").items()}
    except ValueError as e:
        raise UserError(
            f"--moslim.fixed {text!r}: levels must be integers, e.g. helpfulness=3,verbosity=1 ({e})"
        ) from None


def add_sampling_flags(group, sampling_default) -> None:
    """The target-sampling flags, shared by `prepare-prompts` and `train_ppo_ray` (the dataset hook)."""
    group.add_argument("--moslim.sampling", default=sampling_default, choices=SAMPLING_MODES,
                       help="how each prompt's targets are drawn")  # fmt: skip
    group.add_argument("--moslim.fixed", default=None, help="targets for --moslim.sampling fixed: helpfulness=3,...")
    group.add_argument("--moslim.columns", default=None, help="for --moslim.sampling column: objective=column,...")
    group.add_argument("--moslim.seed", type=integer, default=42, help="target sampling seed")
    group.add_argument("--moslim.placement", default=DEFAULT_PLACEMENT, choices=PLACEMENTS)
    group.add_argument("--moslim.style", default=DEFAULT_STYLE, choices=STYLES, help="how the directive reads")


class TargetSampler:
    """Which target levels a prompt asks for; deterministic in (seed, row index), independent of call order.

    uniform: every objective, each level equally likely. subset: a random non-empty subset of the objectives (the
    mask: k = 1..K requested objectives, each k equally likely), uniform levels. single: one objective (k = 1), uniform
    levels. fixed: the same targets for every row. column: per-row targets read from the columns `columns` =
    {objective: column}; an empty cell leaves that objective unrequested.

    For the drawn modes (uniform, subset, single), `weights` = {objective: relative weight of each level} makes some
    levels likelier (a level the policy rarely writes gets asked for more), and `exclude` lists requests never drawn
    (a draw that hits one is drawn again): full combinations held out to test generalisation to unseen ones.
    """

    def __init__(self, spec, mode="uniform", seed=0, fixed=None, columns=None, weights=None, exclude=()):
        if mode not in SAMPLING_MODES:
            raise UserError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
        if mode == "fixed" and not fixed:
            raise UserError("sampling mode 'fixed' needs targets, e.g. --moslim.fixed helpfulness=3,verbosity=1")
        if mode == "column" and not columns:
            raise UserError("sampling mode 'column' needs columns, e.g. --moslim.columns helpfulness=help_score")
        if (weights or exclude) and mode in ("fixed", "column"):
            raise UserError(
                f"level weights and excluded requests apply to drawn targets, not to sampling mode {mode!r}"
            )
        self.spec, self.mode, self.seed = spec, mode, seed
        self.fixed = check_request(spec, dict(fixed), "--moslim.fixed") if mode == "fixed" else None
        self.columns = dict(columns) if mode == "column" else None
        for name in self.columns or {}:
            check_request(spec, {name: 0}, "--moslim.columns")
        self.weights = {}
        for name, w in (weights or {}).items():
            check_request(spec, {name: 0}, "level weights")  # an unknown objective: the usual one-line error
            levels = spec.levels[spec.index(name)]
            if len(w) != levels or min(w) <= 0:
                raise UserError(f"level weights for {name!r}: expected {levels} positive numbers, got {list(w)}")
            self.weights[name] = list(w)
        self.exclude = [check_request(spec, dict(r), "excluded request") for r in exclude]

    def sample(self, row: dict, index: int) -> dict[str, int]:
        if self.mode == "fixed":
            return dict(self.fixed)
        if self.mode == "column":
            return self._from_columns(row, index)
        # A string seed goes through sha512: the same stream in every process, whatever PYTHONHASHSEED is.
        rng = random.Random(f"moslim/{self.seed}/{index}")
        for _ in range(1000):
            request = self._draw(rng)
            if request not in self.exclude:
                return request
        raise UserError(f"sampling mode {self.mode!r}: 1000 draws in a row hit the excluded requests {self.exclude}")

    def _draw(self, rng) -> dict[str, int]:
        names = list(self.spec.names)
        if self.mode == "subset":
            chosen = set(rng.sample(names, rng.randint(1, len(names))))
            names = [name for name in names if name in chosen]
        elif self.mode == "single":
            names = [rng.choice(names)]
        request = {}
        for name in names:
            levels = self.spec.levels[self.spec.index(name)]
            # randrange without weights: the stream every earlier prepared dataset was drawn with.
            w = self.weights.get(name)
            request[name] = rng.choices(range(levels), weights=w)[0] if w else rng.randrange(levels)
        return request

    def _from_columns(self, row, index):
        request = {}
        for name, column in self.columns.items():
            if column not in row:
                raise UserError(f"row {index}: no column {column!r} (for objective {name!r}); columns: {list(row)}")
            value = row[column]
            if value is None or value == "":
                continue
            level_names = self.spec.objectives[self.spec.index(name)].level_names
            if isinstance(value, str) and value in level_names:
                value = level_names.index(value)
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
            request[name] = value
        return check_request(self.spec, request, f"row {index}")


def is_moslim_label(label) -> bool:
    if isinstance(label, dict):
        return "moslim" in label
    return isinstance(label, str) and label.lstrip().startswith('{"moslim"')


def question_text(prompt) -> str:
    """The user's own words: the prompt string, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    user_turns = [m["content"] for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not user_turns or not isinstance(user_turns[-1], str):
        raise UserError(f"a chat prompt needs a user message with text content, got {prompt!r:.200}")
    return user_turns[-1]


def prompt_text(prompt) -> str:
    """All the text of a prompt (a string, or chat messages' contents), where its directive is looked for."""
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return prompt if isinstance(prompt, str) else ""


def condition_row(
    row,
    spec,
    sampler,
    index,
    input_key="input",
    label_key="label",
    placement=DEFAULT_PLACEMENT,
    question_key="raw_question",
    style=DEFAULT_STYLE,
) -> dict:
    """The row with the directive applied to `row[input_key]` (chat messages) and the MOSLIM label set.

    The raw question is kept in `question_key` because the reward model scores (question, response), not the
    directive-carrying prompt. A row with a MOSLIM label already passes through unchanged (after checking that the
    label was made with this spec); a row with some other label is an error rather than silently overwritten.
    """
    label = row.get(label_key)
    if is_moslim_label(label):
        try:
            check_label_matches_directive(spec, label_to_request(spec, label), prompt_text(row.get(input_key)))
        except DirectiveError as e:
            raise DirectiveError(f"row {index}: {e}") from None
        return row
    if label not in (None, ""):
        raise UserError(
            f"row {index}: column {label_key!r} already holds a non-MOSLIM label {label!r:.80}; "
            f"pass another --data.label_key"
        )
    if input_key not in row:
        raise UserError(f"row {index}: no input column {input_key!r} (--data.input_key); columns: {list(row)}")
    prompt = row[input_key]
    if not isinstance(prompt, (str, list)) or not prompt:
        raise UserError(f"row {index}: {input_key!r} must be a non-empty string or chat messages, got {prompt!r:.80}")
    request = sampler.sample(row, index)
    out = dict(row)
    out[question_key] = question_text(prompt)
    out[input_key] = apply_directive(spec, request, prompt, placement=placement, style=style)
    out[label_key] = request_to_label(spec, request)
    return out


def condition_rows(rows, spec, sampler, source="<rows>", **keys) -> list[dict]:
    """`condition_row` over an iterable of rows (row index = position); errors name `source` and the row."""
    out = []
    for index, row in enumerate(rows):
        try:
            out.append(condition_row(row, spec, sampler, index, **keys))
        except ValueError as e:
            raise UserError(f"{source}: {e}") from e
    if not out:
        raise UserError(f"{source}: the dataset is empty")
    return out


def target_summary(spec, rows, label_key="label") -> str:
    """One line per objective: how often each level is requested, and how often the objective is left out."""
    counts = {name: collections.Counter() for name in spec.names}
    for row in rows:
        request = label_to_request(spec, row[label_key])
        for name in spec.names:
            counts[name][request.get(name, "-")] += 1
    lines = [f"{len(rows)} prompts; requested level counts per objective ('-' = not requested):"]
    for objective in spec.objectives:
        c = counts[objective.name]
        cells = [f"{level}:{c[i]}" for i, level in enumerate(objective.level_names)] + [f"-:{c['-']}"]
        lines.append(f"  {objective.name:<16} " + "  ".join(cells))
    return "\n".join(lines)


def load_prompt_data(datasets: str, split: str, max_samples: int, input_key: str = "input"):
    """Whatever OpenRLHF's `blending_datasets` reads (json/jsonl/csv/parquet/arrow files, save_to_disk folders);
    local .txt (one prompt per line) and .json/.jsonl files (.gz or not) are read here, with errors naming file and
    line."""
    from datasets.exceptions import DatasetsError
    from openrlhf.datasets.utils import blending_datasets
    from pyarrow import ArrowException

    paths = [p.split("@")[0].strip() for p in datasets.split(",")]
    for path in paths:
        # blending_datasets sends a missing local file to the hub loader, whose error does not say "not found".
        if path.lower().endswith((*FILE_EXTENSIONS, *LOCAL_EXTENSIONS)) and not os.path.exists(path):
            raise UserError(f"--data.dataset: no such file {path!r}")
    if "@" not in datasets and all(p.lower().endswith(LOCAL_EXTENSIONS) for p in paths):
        return [row for path in paths for row in read_local_prompts(path, input_key)][:max_samples]
    for path in paths:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise UserError(f"{path}: the file is empty")
    quiet = SimpleNamespace(print=lambda *a: None, is_rank_0=lambda: False, args=SimpleNamespace(use_ms=False))
    try:
        return blending_datasets(datasets, None, quiet, max_count=max_samples, dataset_split=split)
    except (FileNotFoundError, DatasetsError, ArrowException) as e:  # a folder without data, a corrupt parquet file
        raise UserError(f"--data.dataset {datasets!r}: cannot be read ({type(e).__name__}: {e})") from None


# Read here rather than by blending_datasets, which sends the .txt and .gz files to the hub loader ("Couldn't reach
# ... on the Hub") and reports a bad JSON line without its file or line number.
LOCAL_EXTENSIONS = (".txt", ".txt.gz", ".json", ".json.gz", ".jsonl", ".jsonl.gz")


def read_local_prompts(path: str, input_key: str) -> list[dict]:
    """Rows of a local prompt file: .txt (one prompt per non-empty line, as `input_key`) or JSON/JSONL, .gz or not."""
    from moslim_plugin.data.ratings import read_records

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if path.lower().endswith((".txt", ".txt.gz")):
        try:
            with (
                gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8") as f
            ):
                rows = [{input_key: line.strip()} for line in f if line.strip()]
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e}); is the file complete?") from None
    else:
        rows = read_records(path)
    if not rows:
        raise UserError(f"{path}: the file is empty (no prompt in it)")
    return rows


def write_rows(rows, output: str) -> None:
    """A .jsonl / .json file (written whole or not at all), else a datasets save_to_disk folder."""
    from moslim_plugin.data.ratings import write_records

    if output.endswith((".jsonl", ".json")):
        return write_records(rows, output)
    try:
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(output)
    except OSError as e:  # a parent that is a file, no permission, no space
        raise UserError(f"--moslim.output {output!r}: cannot be written ({e})") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="moslim-openrlhf prepare-prompts", description=__doc__.split("\n\n")[0])
    p.add_argument("--data.dataset", required=True, help="comma-separated paths, as OpenRLHF's --data.dataset")
    p.add_argument("--data.dataset_split", default="train")
    p.add_argument("--data.max_samples", type=positive_int, default=int(1e8), help="the first N rows")
    p.add_argument("--data.input_key", default="input")
    p.add_argument("--data.label_key", default="label")
    p.add_argument("--moslim.spec", required=True, help="objective spec (YAML or JSON)")
    p.add_argument("--moslim.output", required=True, help=".jsonl file, or a folder for datasets' save_to_disk")
    add_sampling_flags(p, "uniform")
    p.add_argument("--moslim.question_key", default="raw_question", help="column that keeps the raw question")
    args = vars(p.parse_args(argv))
    output = args["moslim.output"]
    writable(output, "--moslim.output", folder=not output.endswith((".jsonl", ".json")))  # before the work

    spec = load_spec(args["moslim.spec"])
    fixed = args["moslim.fixed"] and parse_fixed(args["moslim.fixed"])
    columns = args["moslim.columns"] and parse_assignments(args["moslim.columns"], "--moslim.columns")
    sampler = TargetSampler(spec, args["moslim.sampling"], args["moslim.seed"], fixed=fixed, columns=columns)

    data = load_prompt_data(
        args["data.dataset"], args["data.dataset_split"], args["data.max_samples"], args["data.input_key"]
    )
    keys = dict(
        input_key=args["data.input_key"],
        label_key=args["data.label_key"],
        placement=args["moslim.placement"],
        question_key=args["moslim.question_key"],
        style=args["moslim.style"],
    )
    rows = condition_rows(data, spec, sampler, source=args["data.dataset"], **keys)
    write_rows(rows, args["moslim.output"])
    print(target_summary(spec, rows, args["data.label_key"]))
    print(f"wrote {len(rows)} rows to {args['moslim.output']} (spec {spec.fingerprint}, seed {args['moslim.seed']})")
    return 0
