from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from approvals import sweeps
from approvals.management.commands._sweep import loop_seconds
from audit import chain
from gateway import idempotency, retention, webhooks


class Command(BaseCommand):
    help = (
        "Run the executor, expiry and webhook sweeps and seal the audit chain, once or in a loop."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", type=loop_seconds, default=0, help="Repeat every N seconds.")

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            report = sweeps.run_all()
            webhooks_sent = webhooks.sweep()
            sealed = chain.seal_and_anchor()
            keys = idempotency.sweep()
            sessions = retention.sweep()
            self.stdout.write(
                f"sweep: {report.as_dict()} webhooks={webhooks_sent} sealed={sealed} "
                f"expired_keys={keys} sessions_deleted={sessions}"
            )
            if not options["loop"]:
                return
            time.sleep(options["loop"])
