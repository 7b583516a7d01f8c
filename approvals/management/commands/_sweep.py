"""The shape every single-sweep command shares: run once, or every N seconds."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


def loop_seconds(raw: str) -> float:
    """``--loop``: seconds between runs, 0 for once. Refused at once when odd, not after the
    first run by ``time.sleep`` with a traceback."""
    try:
        seconds = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: give 0 (run once) or more seconds")
    return seconds


class SweepCommand(BaseCommand):
    label = "sweep"

    def sweep(self) -> object:
        raise NotImplementedError

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", type=loop_seconds, default=0, help="Repeat every N seconds.")

    def handle(self, *args: Any, **options: Any) -> None:
        run: Callable[[], object] = self.sweep
        while True:
            self.stdout.write(f"{self.label}: {run()}")
            if not options["loop"]:
                return
            time.sleep(options["loop"])
