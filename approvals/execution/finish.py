"""Storing an execution's outcome under its claim's fence, and taking a call away from a
worker that went silent past its lease."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import DatabaseError, transaction
from django.db.models.functions import Now
from django.utils import timezone

from approvals import events, transitions
from approvals.execution.claim import Claim
from approvals.guards import attention, may_not_run_now
from approvals.models import Status, ToolCall
from tools_registry import sql as registry_sql
from tools_registry.policy import Risk

DESTRUCTIVE_FAILED = "A destructive call failed; a person must decide what happens next."


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | failed | unknown
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    latency_ms: int = 0
    tries: int = 1
    # Nothing reached the downstream (``ToolFailed.unsent``, no handler): a failure that
    # says nothing of an earlier attempt's effect. Not stored.
    unsent: bool = False


# Runs inside the transaction that stores an outcome, with the call as finished.
Also = Callable[[ToolCall], None]


def finish_call(*, claim: Claim, outcome: Outcome, also: Also | None = None) -> bool:
    """Store the outcome if the claim is still current; False for a stale (fenced-off) worker.

    No lock and no read: the door's UPDATE matches only while the call is still under this
    claim's fence, and goes to the database with the result's audit event and the COMMIT,
    in one round trip (``transitions.move``). A worker whose lease was taken over finds
    that transaction failed, having written nothing. Its handler's verdict then settles the
    call only if nothing has acted on it since the lease sweep (``_late``); otherwise it
    writes only the audit event that says its result was discarded.

    ``also`` runs in the transaction that stores the outcome, after its writes, with the
    call as finished: what it writes commits with the result, or not at all.
    """
    try:
        _store(claim, outcome, also)
    except DatabaseError as exc:
        if not transitions.not_moved(exc, claim.call):
            raise
        _late(claim, outcome, also)
        return False
    return True


@transaction.atomic
def _store(claim: Claim, outcome: Outcome, also: Also | None) -> None:
    call = copy.copy(claim.call)  # the call as claimed; the claim itself stays as it was
    escalate = outcome.status == Status.FAILED and call.risk == Risk.DESTRUCTIVE
    # An outcome left open while its agent is stopped is a person's, as the stop made the
    # agent's calls unknown at the time (recovery.leave_unknown_to_a_person): a resume
    # before reconciliation looks is no decision to re-run it. The agent's run lock, taken
    # as a claim takes it, puts this after a stop under way.
    for_good = (
        outcome.status == Status.UNKNOWN
        and registry_sql.hold_agent_running(call.agent_id) is not None
    )
    reason = (
        DESTRUCTIVE_FAILED if escalate else may_not_run_now("agent_stopped") if for_good else ""
    )
    _settle(call, outcome, fence=claim.fence, reason=reason, for_good=for_good)
    events.execution_finished(call, tries=outcome.tries)
    if escalate or for_good:
        # Never retried automatically: the call waits on the "needs attention" page.
        events.call_escalated(call, reason=reason)
    if also is not None:
        also(call)


@transaction.atomic
def _late(claim: Claim, outcome: Outcome, also: Also | None) -> None:
    """The outcome of a worker whose lease the sweep took (``expire_lease``), come back.

    Its handler's verdict is first-hand: the effect happened (succeeded) or surely did not
    (failed, ``ToolFailed``). It settles the call as the worker would have on time, unless
    anything else has acted on the call since the sweep; then, and for an outcome still
    unknown, it is only recorded as discarded. Under the row lock, so a reconciliation or a
    person deciding on the call at the same moment comes strictly before or after:

    * still ``unknown``: not settled or sent to run again by reconciliation or a person;
    * the fence exactly the sweep's (the claim's + 1): claimed by no other attempt since;
    * approved no more times since the claim (``enqueued_at`` as the claim read it): every
      way out of ``unknown`` and back into it passes through ``approved``
      (``send.approve`` stamps it), a re-run that was refused at its claim included.

    Reconciliation's escalation to a person leaves all three as they were: a person has
    been asked and has not answered, and is spared the question. Reads are never settled
    here: the sweep failed them, and the agent was answered then.
    """
    if outcome.status == Status.UNKNOWN or claim.risk == Risk.READ:
        _discard(claim, outcome)
        return
    call = transitions.lock_call(claim.call_id)
    assert call is not None, "calls are never deleted"
    untouched = (
        call.status == Status.UNKNOWN
        and call.fence == claim.fence + 1
        and call.enqueued_at == claim.call.enqueued_at
    )
    if not untouched:
        events.stale_result_discarded(call, claim_fence=claim.fence, outcome_status=outcome.status)
        return
    escalate = outcome.status == Status.FAILED and call.risk == Risk.DESTRUCTIVE
    # Off the "needs attention" page, unless a destructive call failed (as on time).
    _settle(call, outcome, fence=call.fence, reason=DESTRUCTIVE_FAILED if escalate else "")
    events.late_result_accepted(call, claim_fence=claim.fence, tries=outcome.tries)
    if escalate:
        events.call_escalated(call, reason=DESTRUCTIVE_FAILED)
    if also is not None:
        also(call)


def _settle(
    call: ToolCall, outcome: Outcome, *, fence: int, reason: str, for_good: bool = False
) -> None:
    """The one move of an execution's outcome onto the call, under ``fence``."""
    transitions.move(
        call,
        outcome.status,
        fence=fence,
        result=outcome.result,
        error=outcome.error,
        latency_ms=outcome.latency_ms,
        lease_until=None,
        finished_at=timezone.now(),
        **attention(reason, for_good=for_good),
    )


@transaction.atomic
def _discard(claim: Claim, outcome: Outcome) -> None:
    current = ToolCall.objects.select_related("tool", "agent").get(pk=claim.call_id)
    events.stale_result_discarded(current, claim_fence=claim.fence, outcome_status=outcome.status)


LEASE_EXPIRED_WRITE = (
    "The worker running the call went silent past its lease; whether the effect happened "
    "is being checked with the downstream system."
)
LEASE_EXPIRED_READ = "The worker running the read went silent past its lease."


@transaction.atomic
def expire_lease(
    *, call_id: UUID, now: datetime | None = None, skip_locked: bool = False
) -> ToolCall | None:
    """Take a call away from a worker that went silent past its lease; None if not due (or,
    with ``skip_locked``, if another transaction holds the call, or a stop of its agent holds
    or awaits the agent's run lock: the sweep's next pass).

    A write becomes ``unknown``: its effect may or may not have happened, and the
    reconciliation sweep asks the downstream. A read has no effect, so it fails. The fence
    moves on in the same UPDATE, so the silent worker's late ``finish_call`` (a paused or
    partitioned process that wakes up) matches no row: its handler's verdict then settles
    the call only if nothing else has acted on it since (``_late``).
    """
    # The agent's run lock first, as a claim and a stop take it: the agent is read as a stop
    # under way leaves it. The lease against the database's clock (sweeps.expire_leases).
    call = transitions.lock_call(
        call_id,
        skip_locked=skip_locked,
        hold_agent=True,
        status=Status.EXECUTING,
        lease_until__lt=now or Now(),
    )
    now = now or timezone.now()
    if call is None:
        return None
    claim_fence = call.fence
    is_read = call.risk == Risk.READ
    # Left open while its agent is stopped: a person's (see _store).
    for_good = not is_read and call.agent.stopped_at is not None
    reason = may_not_run_now("agent_stopped") if for_good else ""
    transitions.move(
        call,
        Status.FAILED if is_read else Status.UNKNOWN,
        fence=claim_fence,
        bump_fence=True,
        lease_until=None,
        error={
            "code": "lease_expired",
            "message": LEASE_EXPIRED_READ if is_read else LEASE_EXPIRED_WRITE,
        },
        finished_at=now if is_read else None,
        **attention(reason, for_good=for_good),
    )
    events.lease_expired(call, claim_fence=claim_fence)
    if for_good:
        events.call_escalated(call, reason=reason)
    return call
