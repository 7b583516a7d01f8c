from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from approvals import sweeps
from approvals.management.commands._sweep import loop_seconds, survived
from audit import chain
from gateway import idempotency, retention, webhooks


class Command(BaseCommand):
    help = (
        "Run the executor, expiry and webhook sweeps and seal the audit chain, once or in a loop."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", type=loop_seconds, default=0, help="Repeat every N seconds.")

    def handle(self, *args: Any, **options: Any) -> None:
        loop = bool(options["loop"])
        while True:
            # Each on its own: one that fails leaves the others to run (the webhooks and the
            # chain's seal do not wait on a sweep that fails on every run).
            report = survived(lambda: sweeps.run_all().as_dict(), "sweep", loop=loop)
            webhooks_sent = survived(webhooks.sweep, "webhook sweep", loop=loop)
            sealed = survived(chain.seal_and_anchor, "sealing", loop=loop)
            keys = survived(idempotency.sweep, "idempotency sweep", loop=loop)
            sessions = survived(retention.sweep, "sessions sweep", loop=loop)
            self.stdout.write(
                f"sweep: {report} webhooks={webhooks_sent} sealed={sealed} "
                f"expired_keys={keys} sessions_deleted={sessions}"
            )
            if not options["loop"]:
                return
            time.sleep(options["loop"])
