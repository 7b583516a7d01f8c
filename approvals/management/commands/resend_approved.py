from __future__ import annotations

from approvals import sweeps
from approvals.management.commands._sweep import SweepCommand


class Command(SweepCommand):
    help = "Send again the approved calls whose executor task never started."
    label = "resent"

    def sweep(self) -> int:
        return sweeps.resend_stalled_approved()
