from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry.models import Agent
from tools_registry.services import stop_agent


class Command(BaseCommand):
    help = (
        "Stop an agent at once: its tokens are refused (403 agent_stopped, with the reason), "
        "its calls waiting for a decision are cancelled, none of its calls starts any more. "
        "Audited. Undo with resume_agent (cancelled calls stay cancelled)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name.")
        parser.add_argument(
            "--reason", required=True, help="Why: the agent and the reviewers are told it."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            raise CommandError(f"No agent named {options['agent']!r}.")
        try:
            stop = stop_agent(agent=agent, reason=options["reason"], stopped_by=None)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if stop.already_stopped:
            self.stdout.write(
                f"{agent.name} was already stopped since {stop.agent.stopped_at:%Y-%m-%d %H:%M} "
                f"UTC: {stop.agent.stop_reason}"
            )
            return
        self.stdout.write(
            f"Stopped {agent.name}: its tokens are refused; cancelled {len(stop.cancelled)} "
            "call(s) waiting for a decision."
        )
        for call_id in stop.cancelled:
            self.stdout.write(f"  cancelled {call_id}")
