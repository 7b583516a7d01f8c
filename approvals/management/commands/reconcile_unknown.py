from __future__ import annotations

from approvals import sweeps
from approvals.management.commands._sweep import SweepCommand


class Command(SweepCommand):
    help = (
        "Ask the downstream about calls whose outcome is unknown: mark them succeeded, run "
        "them again with the same key, or escalate them to a person."
    )
    label = "reconciled"

    def sweep(self) -> dict[str, int]:
        return dict(sorted(sweeps.reconcile_unknown().items()))
