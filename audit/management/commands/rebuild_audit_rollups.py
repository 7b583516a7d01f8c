"""Make the analytics summary again from the sealed audit events (after a restore, or to
check it: the summary is derived data, the events are the record)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit import chain
from audit.models import DailyCount, DecisionLatency


class Command(BaseCommand):
    help = "Rebuild the audit analytics summary (DailyCount, DecisionLatency) from the trail."

    def handle(self, *args: Any, **options: Any) -> None:
        chain.rebuild_rollups()
        self.stdout.write(
            f"{DailyCount.objects.count()} daily counts, "
            f"{DecisionLatency.objects.count()} decision latencies"
        )
