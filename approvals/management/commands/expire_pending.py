from __future__ import annotations

from approvals import sweeps
from approvals.management.commands._sweep import SweepCommand


class Command(SweepCommand):
    help = "Expire pending calls whose approval TTL has passed."
    label = "expired"

    def sweep(self) -> int:
        return sweeps.expire_overdue_pending()
