from __future__ import annotations

from approvals import sweeps
from approvals.management.commands._sweep import SweepCommand


class Command(SweepCommand):
    help = "Move executing calls whose worker went silent past its lease to unknown (fence + 1)."
    label = "leases expired"

    def sweep(self) -> int:
        return sweeps.expire_leases()
