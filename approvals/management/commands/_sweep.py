"""The shape every single-sweep command shares: run once, or every N seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class SweepCommand(BaseCommand):
    label = "sweep"

    def sweep(self) -> object:
        raise NotImplementedError

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", type=float, default=0, help="Repeat every N seconds.")

    def handle(self, *args: Any, **options: Any) -> None:
        run: Callable[[], object] = self.sweep
        while True:
            self.stdout.write(f"{self.label}: {run()}")
            if not options["loop"]:
                return
            time.sleep(options["loop"])
