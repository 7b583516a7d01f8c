from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry import registry
from tools_registry.lint import lint_stored, lint_tool
from tools_registry.models import Tool


class Command(BaseCommand):
    help = (
        "Lint the tool definitions declared in code (or, with --stored, the Tool rows): "
        "descriptions, argument names and schema rules. Exits non-zero when any fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="Only these tools (default: all).")
        parser.add_argument(
            "--stored",
            action="store_true",
            help=(
                "Lint the definitions stored in the database, as the admin shows them, and "
                "check their policy rules again (after an upgrade: rules saved before a "
                "check existed)."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names: list[str] = options["names"]
        tools: list[Any]
        if options["stored"]:
            rows = Tool.objects.order_by("name")
            tools = list(rows.filter(name__in=names) if names else rows)
        else:
            tools = [t for t in registry.registered() if not names or t.name in names]
        missing = sorted(set(names) - {t.name for t in tools})
        if missing:
            raise CommandError(f"No tool named {', '.join(missing)}.")
        failing = 0
        problems_total = 0
        teams = (
            frozenset(Group.objects.values_list("name", flat=True)) if options["stored"] else None
        )
        for tool in tools:
            problems = lint_tool(tool) if teams is None else lint_stored(tool, teams)
            if not problems:
                self.stdout.write(f"ok    {tool.name}")
                continue
            failing += 1
            problems_total += len(problems)
            self.stdout.write(f"FAIL  {tool.name}")
            for problem in problems:
                self.stdout.write(f"      {problem}")
        if failing:
            raise CommandError(
                f"{problems_total} lint problem(s) in {failing} of {len(tools)} tool(s)."
            )
        self.stdout.write(f"{len(tools)} tool(s) pass the lint.")
