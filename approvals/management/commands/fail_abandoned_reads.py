from __future__ import annotations

from approvals import sweeps
from approvals.management.commands._sweep import SweepCommand


class Command(SweepCommand):
    help = "Fail reads left received past the longest they could run (their request died)."
    label = "reads abandoned"

    def sweep(self) -> int:
        return sweeps.fail_abandoned_reads()
