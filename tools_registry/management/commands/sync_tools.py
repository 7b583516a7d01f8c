from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from tools_registry.services import sync_tools


class Command(BaseCommand):
    help = "Create or update Tool rows from the tools declared in code, keeping admins' policy."

    def handle(self, *args: Any, **options: Any) -> None:
        report = sync_tools()
        for label in ("created", "updated", "disabled", "unchanged"):
            names = getattr(report, label)
            if names:
                self.stdout.write(f"{label}: {', '.join(names)}")
