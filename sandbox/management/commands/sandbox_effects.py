from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from sandbox.models import Effect


class Command(BaseCommand):
    help = "Print every effect the sandbox systems applied, one JSON object per line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tool", help="Only effects of this tool.")

    def handle(self, *args: Any, **options: Any) -> None:
        effects = Effect.objects.order_by("at", "id")
        if options["tool"]:
            effects = effects.filter(tool=options["tool"])
        for effect in effects.iterator():
            line = {
                "tool": effect.tool,
                "idempotency_key": effect.idempotency_key,
                "at": effect.at.isoformat(),
                "deliveries": effect.deliveries,
                "result": effect.summary.get("result"),
            }
            self.stdout.write(json.dumps(line, sort_keys=True))
