from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry.models import Agent, AgentToken
from tools_registry.services import issue_token


class Command(BaseCommand):
    help = "Create a bearer token for an agent. The token is printed once, alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name.")
        parser.add_argument("--label", default="", help="What the token is for.")

    def handle(self, *args: Any, **options: Any) -> None:
        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            raise CommandError(f"No agent named {options['agent']!r}.")
        longest = AgentToken._meta.get_field("label").max_length
        if longest is not None and len(options["label"]) > longest:
            raise CommandError(f"A token's label is at most {longest} characters.")
        _, token = issue_token(agent=agent, label=options["label"])
        self.stderr.write(
            f"New token for {agent.name}; it is shown once and stored only as a hash:"
        )
        self.stdout.write(token)
