from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry.models import Agent
from tools_registry.services import rotate_webhook_secret


class Command(BaseCommand):
    help = (
        "Give an agent a new webhook signing secret. The secret is printed once, alone on the "
        "last line; the old one stops verifying at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name.")

    def handle(self, *args: Any, **options: Any) -> None:
        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            raise CommandError(f"No agent named {options['agent']!r}.")
        secret = rotate_webhook_secret(agent=agent, rotated_by=None)
        self.stderr.write(f"New webhook secret for {agent.name}; it is shown once:")
        self.stdout.write(secret)
