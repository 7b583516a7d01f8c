"""The shape every single-sweep command shares: run once, or every N seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from approvals import sweeps
from core.arguments import seconds


def loop_seconds(raw: str) -> float:
    """``--loop``: seconds between runs, 0 for once."""
    return seconds(raw, give="0 (run once) or more seconds")


def survived(run: Callable[[], object], label: str, *, loop: bool) -> object:
    """``run()``, or, in a loop, "failed" when it raised: logged, and the next run goes on.
    ``make run`` starts ``run_sweeps --loop`` once, with nothing to restart it: one failed
    run (PostgreSQL restarted under it, SQLite's "database is locked") ended the loop, and no
    call expired, no webhook went and no reviewer was mailed for the rest of the session.
    Once, the failure is the command's: its exit status says so."""
    if not loop:
        return run()
    result = sweeps.on_its_own(run, label, then="the loop runs it again")
    return "failed" if isinstance(result, sweeps.Failed) else result


class SweepCommand(BaseCommand):
    label = "sweep"

    def sweep(self) -> object:
        raise NotImplementedError

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", type=loop_seconds, default=0, help="Repeat every N seconds.")

    def handle(self, *args: Any, **options: Any) -> None:
        run: Callable[[], object] = self.sweep
        while True:
            self.stdout.write(
                f"{self.label}: {survived(run, self.label, loop=bool(options['loop']))}"
            )
            if not options["loop"]:
                return
            time.sleep(options["loop"])
