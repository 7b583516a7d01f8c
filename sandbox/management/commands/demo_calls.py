from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.arguments import seconds
from sandbox.demo import demo_agent_token
from sandbox.demo_calls import submit_all


class Command(BaseCommand):
    help = (
        "Send the demo agent's calls to a running Countersign (make run starts this beside "
        "the server): small refunds approved by rule, the rest for the reviewers."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--url", default=settings.PUBLIC_URL, help="Where Countersign runs.")
        parser.add_argument("--wait", type=seconds, default=90, help="Seconds to wait for it.")

    def handle(self, *args: Any, **options: Any) -> None:
        token = demo_agent_token()
        if not token:
            raise CommandError("No demo agent token: run manage.py seed_demo first.")
        try:
            submit_all(options["url"], token, wait_seconds=options["wait"], say=self.stdout.write)
        except TimeoutError as late:
            # Exit non-zero: a script that runs it can tell that nothing was sent.
            raise CommandError(f"{late}: no demo call was sent.") from None
