from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandbox.demo import seed_demo


class Command(BaseCommand):
    help = "Create the demo teams, people, agent, token, tools and sandbox data (safe to re-run)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.SANDBOX_ENABLED:
            raise CommandError(
                "The demo acts on the sandbox systems, which are off here: run it in the "
                "embedded mode (make run) or set SANDBOX_ENABLED=1 (then run migrate again: "
                "the sandbox has tables of its own)."
            )
        logins = seed_demo()
        kept = logins.password_file
        source = (
            f"generated, kept in {kept}"
            if logins.password_generated
            else f"from DEMO_PASSWORD or {kept}"
        )
        self.stdout.write("Demo logins (users admin, reviewer, reviewer2, auditor):")
        self.stdout.write(f"  password: {logins.password}  ({source})")
        self.stdout.write(f"  demo-agent token: {logins.agent_token}")
