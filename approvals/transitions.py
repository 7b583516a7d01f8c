"""The lifecycle of a tool call, as a table. Every status change is checked against it.

read:              received -> executing -> succeeded | failed
                   received -> failed      (refused at the claim, as approved -> failed; or
                                            abandoned: its request died before running it)
write/destructive: received -> pending -> approved -> executing -> succeeded | failed | unknown
                               approved -> failed  (refused at the claim: the tool or the agent
                                                    was switched off, or the tool changed)
                               pending -> rejected | expired | cancelled
                               unknown -> succeeded | failed   (reconciled or resolved by a person)
                               unknown -> approved             (reconciled: not done, re-run, same key)
                               failed  -> approved             (the agent's retry of a write, same key)

The two re-run moves (``unknown -> approved``, ``failed -> approved``) are for writes only.
A destructive call gets one attempt: after a failure or an unknown outcome a person records
what happened, and an effect still wanted is a new call, with its own approvals.
"""

from __future__ import annotations

from approvals.models import Status
from tools_registry.policy import Risk

ALLOWED: dict[str, frozenset[str]] = {
    Status.RECEIVED: frozenset({Status.PENDING, Status.EXECUTING, Status.FAILED}),
    Status.PENDING: frozenset({Status.APPROVED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}),
    Status.APPROVED: frozenset({Status.EXECUTING, Status.FAILED}),
    Status.EXECUTING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN}),
    Status.UNKNOWN: frozenset({Status.SUCCEEDED, Status.FAILED, Status.APPROVED}),
    Status.FAILED: frozenset({Status.APPROVED}),
}


class InvalidTransition(Exception):
    def __init__(self, current: str, target: str):
        super().__init__(f"a call cannot go from {current} to {target}")
        self.current = current
        self.target = target


RERUNS = frozenset({(Status.UNKNOWN, Status.APPROVED), (Status.FAILED, Status.APPROVED)})
RERUNNABLE_RISKS = frozenset({Risk.WRITE})
# Only a read is ever ``received`` long enough to be abandoned there; a write is created
# ``pending`` in the same transaction.
READS_ONLY = frozenset({(Status.RECEIVED, Status.FAILED)})


def allowed(current: str, target: str, *, risk: str | None = None) -> bool:
    if (current, target) in RERUNS and risk not in RERUNNABLE_RISKS:
        return False
    if (current, target) in READS_ONLY and risk != Risk.READ:
        return False
    return target in ALLOWED.get(current, frozenset())


def require(current: str, target: str, *, risk: str | None = None) -> None:
    """Refuse a move the table does not allow (for ``risk``, where the risk class matters)."""
    if not allowed(current, target, risk=risk):
        raise InvalidTransition(current, target)
