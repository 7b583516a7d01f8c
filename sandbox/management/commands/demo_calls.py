from __future__ import annotations

import argparse
import math
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandbox.demo import demo_agent_token
from sandbox.demo_calls import submit_all


def wait_seconds(raw: str) -> float:
    """``--wait``: refused at once when odd (nan waited for ever, a negative number not at
    all)."""
    try:
        seconds = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: give 0 or more seconds")
    return seconds


class Command(BaseCommand):
    help = (
        "Send the demo agent's calls to a running Countersign (make run starts this beside "
        "the server): small refunds approved by rule, the rest for the reviewers."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--url", default=settings.PUBLIC_URL, help="Where Countersign runs.")
        parser.add_argument("--wait", type=wait_seconds, default=90, help="Seconds to wait for it.")

    def handle(self, *args: Any, **options: Any) -> None:
        token = demo_agent_token()
        if not token:
            raise CommandError("No demo agent token: run manage.py seed_demo first.")
        try:
            submit_all(options["url"], token, wait_seconds=options["wait"], say=self.stdout.write)
        except TimeoutError as late:
            # Exit non-zero: a script that runs it can tell that nothing was sent.
            raise CommandError(f"{late}: no demo call was sent.") from None
