"""Argument types shared by the subcommands: a bad count is a usage error while parsing, before
any model loads (and named with its flag, as argparse names it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in ``low`` .. ``high`` (no upper bound when None), checked while parsing: a run
    with ``bench --patches 0`` would otherwise fail after minutes of export and warm-up."""
    span = f">= {low}" if high is None else f"{low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    return parse


def rows(text: str) -> int:
    """Rows of an engine: 1 to the engine's most (read when a --rows is given: the engine module
    loads numpy)."""
    from notagen_trt.runtime.engine import MAX_ROWS

    return whole_number(1, MAX_ROWS)(text)


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value
