from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from tools_registry.services import sync_tools


class Command(BaseCommand):
    help = "Create or update Tool rows from the tools declared in code, keeping admins' policy."

    def handle(self, *args: Any, **options: Any) -> None:
        report = sync_tools()
        labels = ("created", "updated", "disabled", "unchanged")
        for label in labels:
            names = getattr(report, label)
            if names:
                self.stdout.write(f"{label}: {', '.join(names)}")
        for line in report.switched_off:
            self.stdout.write(f"switched off, its policy no longer fits: {line}")
        if not any(getattr(report, label) for label in labels):
            # Silence here looked like success to a first deployment that has no tools yet.
            self.stdout.write(
                "No tools are declared in code: nothing to sync. Declare them in a `tools` "
                "module of an installed app (docs/tools.md); SANDBOX_ENABLED=1 adds the demo's."
            )
