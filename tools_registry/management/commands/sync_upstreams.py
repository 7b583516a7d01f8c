from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry.management.terminal import shown
from tools_registry.models import Upstream
from tools_registry.services.upstreams import sync_upstream
from tools_registry.upstreams.offers import ImportFailed


class Command(BaseCommand):
    help = "Import again what each upstream (or the one named) offers; print what changed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?", help="Only this upstream.")

    def handle(self, *args: Any, **options: Any) -> None:
        upstreams = Upstream.objects.filter(enabled=True)
        if options["name"]:
            upstreams = Upstream.objects.filter(name=options["name"])
            if not upstreams.exists():
                raise CommandError(f"No upstream named {options['name']!r}.")
        failed = []
        for upstream in upstreams:
            try:
                report = sync_upstream(upstream=upstream)
            except ImportFailed as failure:
                self.stderr.write(f"{upstream.name}: {shown(failure.message)}")
                failed.append(upstream.name)
                continue
            self.stdout.write(
                f"{upstream.name}: imported {len(report.imported)}, changed "
                f"{len(report.changed)}, removed {len(report.removed)}, unchanged "
                f"{len(report.unchanged)}"
            )
            for name in report.imported:
                self.stdout.write(f"  imported {name}")
            for name in report.changed:
                self.stdout.write(f"  changed {name}")
            for name in report.removed:
                self.stdout.write(f"  removed upstream: {name} (disabled)")
            for problem in report.skipped:
                self.stdout.write(f"  not imported: {shown(problem)}")
            for problem in report.disabled:
                self.stdout.write(f"  disabled, its policy no longer fits: {shown(problem)}")
        if failed:
            raise CommandError(f"Could not sync {', '.join(failed)}.")
