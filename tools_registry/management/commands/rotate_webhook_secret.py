from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry.models import Agent
from tools_registry.services import rotate_webhook_secret


class Command(BaseCommand):
    help = (
        "Give an agent a new webhook signing secret (whsec_...). The secret is printed once, "
        "alone on the last line; webhooks carry the old secret's signature too for "
        "WEBHOOK_SECRET_GRACE_SECONDS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name.")

    def handle(self, *args: Any, **options: Any) -> None:
        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            raise CommandError(f"No agent named {options['agent']!r}.")
        secret = rotate_webhook_secret(agent=agent, rotated_by=None)
        agent.refresh_from_db()
        until = agent.previous_webhook_secret_until
        grace = (
            f"the old one verifies until {until.isoformat()}"
            if until
            else "the old one no longer verifies"
        )
        self.stderr.write(f"New webhook secret for {agent.name} ({grace}); it is shown once:")
        self.stdout.write(secret)
