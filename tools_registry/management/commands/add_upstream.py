from __future__ import annotations

import argparse
import math
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry import services
from tools_registry.management.terminal import shown
from tools_registry.models import Agent, Tool, Upstream
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams.offers import ImportFailed
from tools_registry.upstreams.secrets import parse_header_lines


def seconds(raw: str) -> float:
    """``--timeout``: NaN passes the model's range check (no comparison holds for it), and
    an upstream registered with it failed every request with a bare ValueError."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds")
    return value


class Command(BaseCommand):
    help = (
        "Register an upstream (an MCP server or an HTTP API with an OpenAPI document) and "
        "import its tools, printing each imported tool's name on its own line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The upstream's name, the prefix of its tools' names.")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--mcp", metavar="URL", help="The MCP server's endpoint.")
        source.add_argument("--openapi", metavar="URL", help="The OpenAPI document's URL.")
        parser.add_argument("--base-url", default="", help="Where an HTTP API's calls go.")
        parser.add_argument(
            "--header", action="append", default=[], metavar='"Name: value"',
            help="A header sent with every request (repeatable); stored encrypted.",
        )  # fmt: skip
        parser.add_argument("--timeout", type=seconds, default=10, help="Seconds per request.")
        parser.add_argument(
            "--idempotency-header", default="", metavar="NAME",
            help="HTTP APIs: the header the API honours as an idempotency key (e.g. "
            "Idempotency-Key: a repeat of a key gets the first answer, never a second effect). "
            "Named, each call carries its key in it and a write whose outcome is unknown (a "
            "timeout, a 5xx) is sent again by itself. Without it, no key is sent and such a "
            "write waits for a person.",
        )  # fmt: skip
        parser.add_argument(
            "--rerunnable", action="store_true",
            help="MCP servers: its tools honour the key in _meta; unknown outcomes may re-run.",
        )  # fmt: skip
        parser.add_argument("--enable", action="store_true", help="Enable the new tools.")
        parser.add_argument("--allow", action="append", default=[], metavar="AGENT")
        parser.add_argument("--grant", action="append", default=[], metavar="GROUP")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            headers = parse_header_lines(options["header"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        agents = self._named(Agent, options["allow"], "agent")
        groups = self._named(Group, options["grant"], "group")
        if Upstream.objects.filter(name=options["name"]).exists():
            raise CommandError(f"An upstream named {options['name']!r} exists; use sync_upstreams.")
        try:
            upstream = register_upstream(
                name=options["name"],
                kind=Upstream.Kind.MCP if options["mcp"] else Upstream.Kind.OPENAPI,
                url=options["mcp"] or options["openapi"],
                base_url=options["base_url"],
                headers=headers,
                timeout_seconds=options["timeout"],
                idempotency_header=options["idempotency_header"],
                rerunnable=options["rerunnable"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        try:
            report = sync_upstream(upstream=upstream, enable_new=options["enable"])
        except ImportFailed as failure:
            raise CommandError(
                f"Registered {upstream.name}, but its tools could not be imported: "
                f"{shown(failure.message)} Fix it, then run sync_upstreams {upstream.name}."
            ) from None
        tools = list(Tool.objects.filter(upstream=upstream, name__in=report.imported))
        for agent in agents:
            allowed = set(agent.allowed_tools.all()) | set(tools)
            services.save_agent(agent=agent, allowed_tools=allowed, changed_by=None)
        for tool in tools:
            for group in groups:
                services.grant_review(tool=tool, group=group, granted_by=None)
        for name in report.imported:
            self.stdout.write(name)
        for problem in report.skipped:
            self.stderr.write(f"not imported: {shown(problem)}")

    def _named(self, model: Any, names: list[str], what: str) -> list[Any]:
        found = list(model.objects.filter(name__in=names))
        missing = sorted(set(names) - {f.name for f in found})
        if missing:
            raise CommandError(f"No {what} named {', '.join(missing)}.")
        return found
