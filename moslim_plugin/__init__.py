"""MOSLIM multi-objective alignment as an OpenRLHF plugin.

Kept import-light on purpose: this module is imported in every Ray worker by the activation hook, and most
workers never need torch-heavy MOSLIM code.

It also holds the one way a value the user types is checked, used by every subcommand: `Range` (what a number flag
accepts, as the argparse `type` and as `Range.check` for a value given in Python), `option` (a dataclass field that
is also a flag: its help, default and accepted values said once), `add_options` / `check_options` (the flags of such
a dataclass, and the same checks on an instance), and `writable` (an output location, before any work).
"""

import copy
import dataclasses
import functools
import math
import os

__version__ = "0.1.0"

# The OpenRLHF releases whose source our runtime patches were fingerprinted against
# (see moslim_plugin/integration/patches.py).
SUPPORTED_OPENRLHF = ("0.11.2",)


class UserError(ValueError):
    """Bad input from the user (a flag value, a file, a row). Every layer raises it (or a subclass) for input the
    user can fix; `moslim-openrlhf` prints its message as one line and exits 2, while any other exception keeps its
    traceback because it is our bug, not theirs."""


class Range:
    """What a number flag accepts: an integer (`kind=int`: counts, limits, ports) or a finite float, between
    optional bounds (`*_open`: the bound itself is excluded). NaN and infinities are never accepted, nor a bool.
    `special=(value, meaning)`: one value outside the range that the flag gives a meaning, such as -1 for "every
    epoch" (OpenRLHF's convention).

    An instance is the argparse `type` of its flag (text -> number, else an ArgumentTypeError that the CLI prints as
    one line after the flag's name) and `check(value, flag)` refuses a value given in Python the same way."""

    def __init__(self, kind=float, low=None, high=None, low_open=False, high_open=False, special=None):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.special = special
        what = "an integer" if kind is int else "a finite number"
        if low is not None and high is not None:
            what = "an integer" if kind is int else "a number"  # both bounds: "finite" goes without saying
            self.expected = f"{what} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None or high is not None:
            sign = (">" if low_open else ">=") if low is not None else ("<" if high_open else "<=")
            self.expected = f"{what} {sign} {low if low is not None else high}"
        else:
            self.expected = what
        if special is not None:
            self.expected = f"{special[0]} ({special[1]}) or {self.expected}"

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        if self.special is not None and value == self.special[0]:
            return True
        if not math.isfinite(value):
            return False
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return low_ok and (self.high is None or (value < self.high if self.high_open else value <= self.high))

    def __call__(self, text: str):
        import argparse

        try:
            value = self.kind(text)  # int("1.5") and int("1e3") fail: a count is written as an integer
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text}")
        return value

    def check(self, value, flag: str):
        """`value` if this range accepts it, else a UserError naming `flag`, the value and the range."""
        if not self.accepts(value):
            raise UserError(f"{flag} {value!r}: expected {self.expected}")
        return value


# The ranges most flags need; a flag with other bounds makes its own Range.
positive_int = Range(int, 1)  # counts, sizes, limits: 0 or less would fail far from the flag or empty the result
nonnegative_int = Range(int, 0)  # counts where 0 means "none"
integer = Range(int)  # seeds
positive = Range(float, 0, low_open=True)  # rates, temperatures, time limits
nonnegative = Range(float, 0)
finite = Range(float)
probability = Range(float, 0, 1)
port = Range(int, 1, 65535)


def option(default=None, help: str = "", kind=None, choices=None, **metadata):
    """A dataclass field that is also the flag `--<prefix>.<name>` (`add_options`): its help, default and accepted
    values (`kind`: a Range or any argparse type; `choices`) are written once, here. `metadata`: what else a
    config class wants to know of its fields; `flag="--train.batch_size"` names a flag outside the class's prefix,
    `nargs` and `required` are argparse's. A dict or list default is copied for each instance."""
    metadata = {"help": help, "kind": kind, "choices": choices, **metadata}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(cls) -> list:
    """The `option` fields of a dataclass (class or instance)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def default_of(field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def flag_of(field, prefix: str) -> str:
    return field.metadata.get("flag") or f"--{prefix}.{field.name}"


def add_options(parser, cls, prefix: str) -> None:
    """The flags `--<prefix>.<name>` of the dataclass `cls`'s `option` fields; a bool field is a switch. The help
    says what the flag accepts and its default, from the field."""
    import json

    for f in option_fields(cls):
        default, meta = default_of(f), f.metadata
        if isinstance(default, bool):
            parser.add_argument(flag_of(f, prefix), action="store_true", help=meta["help"])
            continue
        # A dict goes in as JSON text, parsed by the config class (OpenRLHF's hierarchize would make it a namespace).
        default = json.dumps(default) if isinstance(default, dict) else default
        notes = [meta["kind"].expected] if isinstance(meta["kind"], Range) else []
        notes += [] if default is None else [f"default: {default}"]
        parser.add_argument(
            flag_of(f, prefix), type=meta["kind"], default=default, choices=meta["choices"],
            help=(meta["help"] + (f" ({'; '.join(notes)})" if notes else "")).replace("%", "%%"),
            **{key: meta[key] for key in ("nargs", "required") if meta.get(key)},
        )  # fmt: skip


def option_values(cls, args, prefix: str) -> dict:
    """{name: value} of `cls`'s option flags in parsed args (a Namespace or a dict with dotted keys)."""
    values = args if isinstance(args, dict) else vars(args)
    return {f.name: values[flag_of(f, prefix)[2:]] for f in option_fields(cls)}


def check_options(obj, prefix: str) -> None:
    """Each `option` field of a dataclass instance checked as its flag is: a value given in Python (an API call, a
    configuration read back from JSON) gets the same one-line error as the flag would."""
    for f in option_fields(obj):
        value, default, meta, flag = getattr(obj, f.name), default_of(f), f.metadata, flag_of(f, prefix)
        if value is None and meta.get("required"):
            raise UserError(f"{flag} is required")
        if value is None and default is None:
            continue
        # A flag of several values (`nargs`) is checked value by value; an integer is a valid float.
        values = value if meta.get("nargs") and isinstance(value, (list, tuple)) else [value]
        expected = (int, float) if type(default) is float else type(default)
        for one in values:
            if isinstance(meta["kind"], Range):
                meta["kind"].check(one, flag)
            elif default is not None and not meta.get("nargs") and not isinstance(one, expected):
                raise UserError(f"{flag} {one!r}: expected a {type(default).__name__}")
        if meta["choices"] is not None and value not in meta["choices"]:
            raise UserError(f"{flag} {value!r}: expected one of {list(meta['choices'])}")


def writable(path, flag: str, folder: bool = True) -> None:
    """Refuse an output location that cannot be written, before any work: a file where a folder is wanted (or the
    reverse), a parent that is a file, a folder where no file can be made (permissions, a read-only file system).
    Leaves nothing behind: a run that fails later has no empty output folder to show for it."""
    import tempfile

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and folder != os.path.isdir(path):
        raise UserError(f"{flag} {path!r}: {'a file, not a folder' if folder else 'a folder, not a file'}")
    target = path if folder else os.path.dirname(path)
    while not os.path.exists(target):  # the nearest existing folder is where the new ones will be made
        target = os.path.dirname(target)
    if not os.path.isdir(target):
        raise UserError(f"{flag} {path!r}: cannot be written ({target} is a file, not a folder)")
    try:
        tempfile.TemporaryFile(dir=target).close()  # what the run will do; os.access misses read-only mounts
    except OSError as e:
        raise UserError(f"{flag} {path!r}: cannot be written in {target} ({e.strerror})") from None


# `--threads`, one meaning on every command that runs a model (train-rm, evaluate-rm, evaluate, screen, demo,
# serve-reward): torch's intra-op CPU threads in this process. On a machine other jobs share, fewer threads than
# cores is often faster (threads that wait for each other at every op).
THREADS_HELP = "torch CPU threads of this process (default: torch's, one per core; 1 is often faster when busy)"


def threads_option():
    """The `--threads` field, declared once: TrainRMConfig has it, `add_threads_flag` gives it to argparse commands."""
    return option(None, THREADS_HELP, kind=positive_int, flag="--threads")


@dataclasses.dataclass
class _Threads:
    threads: int | None = threads_option()


def add_threads_flag(parser) -> None:
    add_options(parser, _Threads, "")


def set_threads(threads: int | None) -> None:
    """Apply `--threads` (None: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
