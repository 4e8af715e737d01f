"""Argument types shared by the subcommands: a bad count is a usage error while parsing, before
any model loads (and named with its flag, as argparse names it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer >= ``minimum`` (a run with --patches 0 would otherwise fail after minutes of
    export and warm-up)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def rows(text: str) -> int:
    """Rows of an engine: 1 to the engine's most."""
    from notagen_trt.runtime.engine import MAX_ROWS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number 1 to {MAX_ROWS}, got {text!r}") from None
    if not 1 <= value <= MAX_ROWS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_ROWS}, got {value}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value
