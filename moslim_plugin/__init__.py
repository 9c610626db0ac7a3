"""MOSLIM multi-objective alignment as an OpenRLHF plugin.

Kept import-light on purpose: this module is imported in every Ray worker by the activation hook, and most
workers never need torch-heavy MOSLIM code.
"""

__version__ = "0.1.0"

# The OpenRLHF releases whose source our runtime patches were fingerprinted against
# (see moslim_plugin/integration/patches.py).
SUPPORTED_OPENRLHF = ("0.11.2",)


class UserError(ValueError):
    """Bad input from the user (a flag value, a file, a row). Every layer raises it (or a subclass) for input the
    user can fix; `moslim-openrlhf` prints its message as one line and exits 2, while any other exception keeps its
    traceback because it is our bug, not theirs."""


def positive_int(text: str, minimum: int = 1) -> int:
    """argparse `type` of a count flag (batch sizes, samples, tokens): 0 or less would fail far from the flag, or
    silently produce an empty result."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse `type` of a count flag where 0 means "none" (sampled answers per request)."""
    return positive_int(text, minimum=0)
