from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway import breaker, coordination
from tools_registry.models import Tool


class Command(BaseCommand):
    help = (
        "Close a tool's circuit breaker now, when its downstream is known to be healthy "
        "again, instead of waiting for the cool-down and a probe. Audited with the reason."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tool", help="The tool's name.")
        parser.add_argument("--reason", required=True, help="Why, for the audit trail.")

    def handle(self, *args: Any, **options: Any) -> None:
        tool = Tool.objects.filter(name=options["tool"]).first()
        if tool is None:
            raise CommandError(f"No tool named {options['tool']!r}.")
        reason = options["reason"].strip()
        if not reason:
            raise CommandError("Give a --reason: it goes into the audit trail.")
        if not coordination.shared():
            # The embedded mode keeps each process's breakers in its own memory: closing
            # this command's would close nothing the server uses, and the trail would say
            # it had.
            raise CommandError(
                "In the embedded mode the breaker lives in the server process: restart the "
                f"server, or wait the tool's cool-down ({tool.breaker_cooldown_seconds} s)."
            )
        was_open = breaker.close_by_operator(tool, reason=reason)
        self.stdout.write(
            f"breaker of {tool.name} closed" if was_open else f"breaker of {tool.name} was closed"
        )
