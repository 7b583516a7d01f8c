"""Command-line arguments the management commands share."""

from __future__ import annotations

import argparse
import math


def seconds(raw: str, *, give: str = "0 or more seconds") -> float:
    """A number of seconds, refused by argparse at once when it is not one (``nan`` waited
    for ever, a negative number not at all, and ``time.sleep`` raised only after a first
    run, with a traceback)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: give {give}")
    return value
