"""Rated responses -> per-objective classification rows for `train-rm`.

Every reader turns its source rows into (question, response, record) triples; the level of objective `o` is then
read from `record` at `o.rating.path` (the objective's name when the spec has no `rating`) and binned by
`o.rating.bins` (without bins the rating must be an integer and level = rating - lowest rating). Output rows are
`{"question", "response", "labels": {objective: level or null}}`; a null label (missing rating) masks that head in
the loss and keeps the other labels.

Readers (`--moslim.format`):
  helpsteer2     prompt, response, helpfulness/correctness/coherence/complexity/verbosity rated 0-4
  ultrafeedback  instruction, completions[i].response, completions[i].annotations.<aspect>.Rating rated 1-5
                 (aspects helpfulness, honesty, instruction_following, truthfulness; "N/A" = missing)
  pku_saferlhf   prompt, response_{0,1}, is_response_{0,1}_safe -> `safe` (0/1), response_{0,1}_severity_level
                 -> `severity` (0-3)
  hh_rlhf        chosen/rejected dialogues; chosen -> 1, rejected -> 0 for the file's subset objective:
                 helpful-* files -> `helpful`, harmless-* files -> `harmless`
  generic        any JSON/JSONL/parquet/arrow/csv rows; the spec's rating paths are dotted paths
                 (`annotations.helpfulness`); question/response are dotted paths or templates over them
                 (`--moslim.question_key "{context}\\n\\n{dialogue}"`); integer ratings need no bins, only
                 `rating.range` when the scale does not start at 0 (default range: 0 .. levels - 1)

Averaged ratings (e.g. the mean of three raters' 1-3 scores: 1, 1.33, 1.67, ..., 3) are not integers: give the
objective `rating.bins`, one threshold fewer than it has levels; a rating's level is the number of thresholds at or
below it. Spec for three levels, 1-1.49 -> 0, 1.5-2.49 -> 1, 2.5-3 -> 2:

    objectives:
      - name: engaging
        levels: 3
        rating: {path: Engaging, range: [1, 3], bins: [1.5, 2.5]}

Optional template fields: a part of a template in square brackets that holds a {field} is dropped, its label with
it, when that field is missing, null, empty or equal to a --moslim.placeholder value (white space stripped), e.g.
a fact that some rows lack and others fill with the data set's own placeholder:

    --moslim.question_key "[Fact: {fact}\\n\\n]{context}" --moslim.placeholder _nofact

    moslim-openrlhf prepare-ratings --moslim.format helpsteer2 --moslim.spec helpsteer2 \\
        --data.dataset helpsteer2_train.jsonl --moslim.output ratings.jsonl
"""

import argparse
import collections
import gzip
import json
import os
import re

from moslim_plugin import UserError, writable
from moslim_plugin.core.spec import load_spec

MISSING = object()
NA_STRINGS = ("", "N/A", "n/a", "NA", "null", "None")
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def read_records(path: str) -> list:
    """Rows of a .json/.jsonl file (optionally .gz), a parquet/arrow file or a datasets save_to_disk folder.
    Every error names the file (and the line for JSONL)."""
    path = str(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder")
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".json", ".jsonl")):
        # Plain json keeps nested ratings as they are; Arrow would force one schema on heterogeneous rows.
        try:
            with (
                gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8") as f
            ):
                text = f.read()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e}); is the file complete?") from None
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {e.lineno} is not valid JSON ({e.msg})") from None
            except RecursionError:  # Python's reader gives up near 1,000 levels: no row is nested like that
                raise UserError(f"{path}: nested too deeply to be rows of data") from None
            where = [f"item {i}" for i in range(len(rows))]
        else:
            rows, where = [], []
            for line_no, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}: line {line_no} is not valid JSON ({e})") from None
                    except RecursionError:
                        raise UserError(f"{path}: line {line_no} is nested too deeply to be a row of data") from None
                    where.append(f"line {line_no}")
        for row, at in zip(rows, where):
            if not isinstance(row, dict):
                raise UserError(f"{path}: {at}: expected a JSON object (one row), got {row!r:.80}")
        return rows
    import datasets
    from pyarrow import ArrowException

    try:
        if name.endswith((".parquet", ".arrow", ".csv")):
            kind = os.path.splitext(name)[1][1:]
            return list(datasets.load_dataset(kind, data_files=path, split="train"))
        if os.path.isdir(path):
            data = datasets.load_from_disk(path)
            return list(data["train"] if isinstance(data, datasets.DatasetDict) else data)
    except (FileNotFoundError, datasets.exceptions.DatasetsError, ArrowException) as e:  # no dataset, a bad file
        raise UserError(f"{path}: cannot be read as a dataset ({type(e).__name__}: {e})") from None
    raise UserError(f"{path}: unknown file type; expected .json, .jsonl(.gz), .parquet, .arrow, .csv or a folder")


def write_records(rows, output: str, flag: str = "--moslim.output") -> None:
    """Rows as JSON lines, written whole or not at all: into `<output>.part`, renamed when complete, so a failed
    write (a full disk) leaves no file that looks like a finished one."""
    part = f"{output}.part"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(part, "w", encoding="utf-8") as f:
            for index, row in enumerate(rows):
                try:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                except (TypeError, ValueError) as e:  # e.g. a date read from parquet: named, not written as text
                    raise UserError(f"{flag} {output!r}: row {index} holds a value JSON cannot write ({e})") from None
        os.replace(part, output)
    except OSError as e:  # a folder given as the file, a parent that is a file, no permission, no space
        raise UserError(f"{flag} {output!r}: cannot be written ({e})") from None
    finally:
        if os.path.isfile(part):
            os.remove(part)


def get_path(record, path: str):
    """`annotations.helpfulness` -> record["annotations"]["helpfulness"]; list items by number; MISSING if absent.
    A key that holds dots itself (a column kept by --moslim.keep_fields) is found as it is."""
    if isinstance(record, dict) and path in record:
        return record[path]
    value = record
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


FIELD = re.compile(r"\{([^{}]+)\}")
# A [...] part of a template that holds a {field}: dropped with its label when the field has no value. Brackets
# without a field inside stay as they are.
OPTIONAL_PART = re.compile(r"\[([^\[\]{}]*(?:\{[^{}]+\}[^\[\]{}]*)+)\]")


def get_field(record, key: str, placeholders=()):
    """A dotted path, or a template of dotted paths such as "{context}\\n\\n{dialogue}" (a typed \\n is a newline):
    the question can combine several fields. A part in square brackets is optional (see the module doc): dropped
    when a field in it is missing, null, empty or one of `placeholders`. MISSING when a required path is absent;
    non-string values as JSON."""
    if "{" not in key:
        return get_path(record, key)

    def fill(part: str, optional: bool):
        values = []
        for path in FIELD.findall(part):
            value = get_path(record, path)
            if optional and (value is None or (isinstance(value, str) and value.strip() in ("", *placeholders))):
                value = MISSING
            if value is MISSING:
                return MISSING
            values.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        values = iter(values)
        return FIELD.sub(lambda m: next(values), part)

    template = key.replace("\\n", "\n").replace("\\t", "\t")
    out, start = [], 0
    for m in OPTIONAL_PART.finditer(template):
        out.append(fill(template[start : m.start()], False))
        filled = fill(m.group(1), True)
        out.append("" if filled is MISSING else filled)
        start = m.end()
    out.append(fill(template[start:], False))
    return MISSING if MISSING in out else "".join(out)


def split_hh_dialogue(text: str) -> tuple[str, str]:
    """HH-RLHF dialogue -> (conversation up to the last assistant turn, last assistant turn)."""
    head, sep, response = text.rpartition("\n\nAssistant:")
    if not sep:
        raise UserError(f"no '\\n\\nAssistant:' turn in {text[:80]!r}")
    return head.strip(), response.strip()


def hh_subset(path: str) -> str:
    base = os.path.basename(path)
    if base.startswith("harmless"):
        return "harmless"
    if base.startswith("helpful"):
        return "helpful"
    raise UserError(f"{path}: cannot tell the HH-RLHF subset from the file name; pass --moslim.hh_subset")


def reader_triples(fmt, rows, path, question_key, response_key, subset, placeholders):
    """Yield (row index, question, response, record, declared ranges {attribute: (lo, hi)} or None)."""
    if fmt == "helpsteer2":
        ranges = {a: (0, 4) for a in HELPSTEER2_ATTRIBUTES}
        for i, row in enumerate(rows):
            yield i, row.get("prompt", MISSING), row.get("response", MISSING), row, ranges
    elif fmt == "ultrafeedback":
        ranges = {a: (1, 5) for a in ULTRAFEEDBACK_ASPECTS}
        for i, row in enumerate(rows):
            for completion in row.get("completions") or []:
                annotations = completion.get("annotations") or {}
                record = {a: get_path(annotations, f"{a}.Rating") for a in ULTRAFEEDBACK_ASPECTS}
                yield i, row.get("instruction", MISSING), completion.get("response", MISSING), record, ranges
    elif fmt == "pku_saferlhf":
        ranges = {"safe": (0, 1), "severity": (0, 3)}
        for i, row in enumerate(rows):
            for r in (0, 1):
                safe = row.get(f"is_response_{r}_safe", MISSING)
                record = {
                    "safe": int(safe) if isinstance(safe, bool) else safe,
                    "severity": row.get(f"response_{r}_severity_level", MISSING),
                }
                yield i, row.get("prompt", MISSING), row.get(f"response_{r}", MISSING), record, ranges
    elif fmt == "hh_rlhf":
        subset = subset or hh_subset(path)
        ranges = {"helpful": (0, 1), "harmless": (0, 1)}
        for i, row in enumerate(rows):
            for key, level in (("chosen", 1), ("rejected", 0)):
                if not isinstance(row.get(key), str):
                    raise UserError(f"{path}: row {i}: expected a {key!r} dialogue string, got {row.get(key)!r:.80}")
                try:
                    question, response = split_hh_dialogue(row[key])
                except UserError as e:
                    raise UserError(f"{path}: row {i}: {key}: {e}") from None
                yield i, question, response, {subset: level}, ranges
    elif fmt == "generic":
        for i, row in enumerate(rows):
            question, response = (get_field(row, key, placeholders) for key in (question_key, response_key))
            yield i, question, response, row, None
    else:
        raise UserError(f"unknown --moslim.format {fmt!r}; expected one of {READERS}")


READERS = ("helpsteer2", "ultrafeedback", "pku_saferlhf", "hh_rlhf", "generic")


def to_level(objective, value, declared_range, where: str):
    """A raw rating -> a level of `objective` (None when the rating is missing); errors name `where`."""
    if value is MISSING or value is None or (isinstance(value, str) and value.strip() in NA_STRINGS):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"{where}: rating {value!r} for {objective.name!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UserError(f"{where}: rating {value!r} for {objective.name!r} is not a number")
    rating = objective.rating or {}
    lo, hi = rating.get("range") or declared_range or (0, objective.levels - 1)
    if not lo <= value <= hi:
        origin = (
            "rating.range in the spec" if "range" in rating else "the reader's" if declared_range else "the default"
        )
        raise UserError(
            f"{where}: rating {value!r} for {objective.name!r} is outside its range [{lo}, {hi}] ({origin}); "
            f"for another scale set rating.range in the spec, e.g. rating: {{range: [1, {objective.levels}]}} for "
            f"integer ratings 1-{objective.levels}, or rating.bins for a continuous one"
        )
    if "bins" in rating:
        return sum(value >= threshold for threshold in rating["bins"])
    if value != int(value) or hi - lo + 1 != objective.levels:
        raise UserError(
            f"{where}: rating {value!r} for {objective.name!r} (range [{lo}, {hi}]) cannot be mapped onto "
            f"{objective.levels} levels without 'rating.bins' in the spec"
        )
    return int(value - lo)


def convert(
    spec, fmt, path, rows, question_key="question", response_key="response", subset=None, placeholders=(), keep=()
):
    """Rated rows of one file -> [{"question", "response", "labels"}, plus the source fields named in `keep`];
    every error names the file and the row. `placeholders`: values that leave out an optional template part."""
    if not rows:
        raise UserError(f"{path}: the dataset is empty")
    clash = sorted(set(keep) & {"question", "response", "labels"})
    if clash:
        raise UserError(f"--moslim.keep_fields {clash}: these names are the output's own fields")
    # Rule objectives need no ratings (they are checked exactly): their labels are left out.
    learned = spec.learned_spec().objectives
    paths = {o.name: (o.rating or {}).get("path", o.name) for o in learned}
    out, found = [], collections.Counter()
    triples = reader_triples(fmt, rows, path, question_key, response_key, subset, placeholders)
    for i, question, response, record, ranges in triples:
        where = f"{path}: row {i}"
        # An empty response is real data (HH-RLHF has some) and a fair thing to rate; an empty question is not.
        for key, value in (("question", question), ("response", response)):
            if value is MISSING:
                field = f" at {question_key if key == 'question' else response_key!r}" if fmt == "generic" else ""
                raise UserError(f"{where}: no {key}{field} for the {fmt} reader; row keys: {list(rows[i])[:20]}")
            if not isinstance(value, str) or (key == "question" and not value.strip()):
                raise UserError(
                    f"{where}: expected a {'non-empty ' * (key == 'question')}{key} string, got {value!r:.80}"
                )
        labels = {}
        for objective in learned:
            attribute = paths[objective.name]
            if ranges is not None and attribute not in ranges:
                raise UserError(
                    f"{path}: objective {objective.name!r} reads rating {attribute!r}, which the {fmt} reader "
                    f"does not provide; it provides {sorted(ranges)} (set rating.path in the spec)"
                )
            value = get_path(record, attribute)
            found[objective.name] += value is not MISSING
            declared = ranges[attribute] if ranges is not None else None
            labels[objective.name] = to_level(objective, value, declared, where)
        kept = {field: get_path(rows[i], field) for field in keep}
        for field, value in kept.items():
            if value is MISSING:
                raise UserError(f"{where}: no {field!r} (--moslim.keep_fields); row keys: {list(rows[i])[:20]}")
        out.append({"question": question, "response": response, "labels": labels, **kept})
    if fmt == "generic":
        unknown = [f"{name} -> {rating!r}" for name, rating in paths.items() if not found[name]]
        if unknown:
            raise UserError(f"{path}: rating path(s) found in no row: {unknown}; first row keys: {list(rows[0])}")
    return out


def level_summary(spec, rows) -> str:
    lines = [f"{len(rows)} rated responses; level counts per objective ('-' = no rating):"]
    for objective in spec.learned_spec().objectives:
        c = collections.Counter(row["labels"][objective.name] for row in rows)
        cells = [f"{name}:{c[i]}" for i, name in enumerate(objective.level_names)] + [f"-:{c[None]}"]
        lines.append(f"  {objective.name:<16} " + "  ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    first, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(
        prog="moslim-openrlhf prepare-ratings",
        description=first,
        epilog=rest,  # the readers, averaged ratings with bins, optional template fields: what users look up
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data.dataset", required=True, help="comma-separated files or save_to_disk folders")
    p.add_argument("--moslim.format", required=True, choices=READERS)
    p.add_argument("--moslim.spec", required=True, help="objective spec (YAML/JSON or a bundled name)")
    p.add_argument("--moslim.output", required=True, help="output .jsonl")
    p.add_argument(
        "--moslim.question_key", default="question", help="dotted path or template of the question (generic)"
    )
    p.add_argument(
        "--moslim.response_key", default="response", help="dotted path or template of the response (generic)"
    )
    p.add_argument(
        "--moslim.placeholder", action="append", default=[],
        help="a value that counts as missing in an optional [...] template part (repeat for several)",
    )  # fmt: skip
    p.add_argument(
        "--moslim.keep_fields", default="",
        help="comma-separated dotted paths of source fields copied into every output row under that name, e.g. a "
        "conversation id for train-rm --moslim.split_key",
    )  # fmt: skip
    p.add_argument("--moslim.hh_subset", default=None, choices=("helpful", "harmless"), help="default: file name")
    args = vars(p.parse_args(argv))
    writable(args["moslim.output"], "--moslim.output", folder=False)  # before reading: not after the work

    spec = load_spec(args["moslim.spec"])
    placeholders = tuple(text.strip() for text in args["moslim.placeholder"])
    keep = tuple(field.strip() for field in args["moslim.keep_fields"].split(",") if field.strip())
    out = []
    for path in (p.strip() for p in args["data.dataset"].split(",")):
        rows = read_records(path)
        keys = (args["moslim.question_key"], args["moslim.response_key"], args["moslim.hh_subset"])
        out += convert(spec, args["moslim.format"], path, rows, *keys, placeholders, keep)
    labelled = [row for row in out if any(level is not None for level in row["labels"].values())]
    if not labelled:
        raise UserError(f"{args['data.dataset']}: no row has a rating for any objective of {list(spec.names)}")
    write_records(labelled, args["moslim.output"])
    print(level_summary(spec, labelled))
    print(f"wrote {len(labelled)} rows to {args['moslim.output']} ({len(out) - len(labelled)} without any rating)")
    return 0
