from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry.models import Agent
from tools_registry.services import resume_agent


class Command(BaseCommand):
    help = "Resume a stopped agent: its tokens are accepted again. Audited."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name.")
        parser.add_argument("--note", default="", help="Why it may act again.")

    def handle(self, *args: Any, **options: Any) -> None:
        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            raise CommandError(f"No agent named {options['agent']!r}.")
        if resume_agent(agent=agent, resumed_by=None, note=options["note"]):
            self.stdout.write(f"Resumed {agent.name}: its tokens are accepted again.")
        else:
            self.stdout.write(f"{agent.name} was not stopped.")
