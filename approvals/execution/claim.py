"""The claim: a worker's exclusive right to run a call, with a fence and a lease.

Of any number of deliveries of the same task exactly one claims the call; the claim and
the intent audit event commit together, before the handler runs. A call whose tool or
agent was switched off, or whose agent was stopped, or whose tool changed, since its
approval is not claimed: it fails here, unrun, with its own audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals import events, transitions
from approvals.guards import CANNOT_RUN, attention, cannot_run_code
from approvals.models import Status, ToolCall
from tools_registry.models import Agent, Tool
from tools_registry.policy import handler_budget_seconds


@dataclass(frozen=True)
class Claim:
    """A worker's exclusive right to run a call, valid while ``fence`` is current."""

    call: ToolCall
    fence: int

    @property
    def call_id(self) -> UUID:
        return self.call.pk

    @property
    def tool_name(self) -> str:
        return self.call.tool.name

    @property
    def risk(self) -> str:
        return self.call.risk

    @property
    def arguments(self) -> dict[str, Any]:
        return self.call.arguments

    @property
    def attempt(self) -> int:
        return self.call.attempts

    @property
    def execution_key(self) -> str:
        return self.call.execution_key

    @property
    def timeout(self) -> float:
        return self.call.tool.timeout_seconds

    @property
    def max_attempts(self) -> int:
        return self.call.tool.max_attempts

    @property
    def sensitive_fields(self) -> tuple[str, ...]:
        """The tool policy's sensitive and secret fields (admins may add to those declared in
        code): a refusal's messages quote neither."""
        return tuple(self.call.tool.hidden_fields)


def lease_until(tool: Tool, now: datetime) -> datetime:
    """When a claim of a call of ``tool`` lapses: its handler budget plus a grace for the
    database work around it. Past it, the lease sweep takes the call away. ``now`` is the
    database's clock where the claim read it (``sql.lock_call``), as the sweep compares
    leases with the database's clock: a worker whose own clock runs behind would otherwise
    stamp a lease that has lapsed already."""
    budget = handler_budget_seconds(
        timeout_seconds=tool.timeout_seconds, max_attempts=tool.max_attempts
    )
    return now + timedelta(seconds=budget + settings.EXECUTOR_LEASE_GRACE_SECONDS)


@transaction.atomic
def claim_call(*, call_id: UUID) -> Claim | None:
    """Take an approved call (or a received read) for execution; None if another delivery
    has it, it is done, or it may no longer run (then it fails here, unrun).

    The row lock queues concurrent deliveries; the first moves the call to ``executing``
    with the fence moved on, the others then find it there and drop out. The agent's run
    lock, taken first, orders the claim against a stop of the agent: a claim that gets in
    before the stop has started when the stop completes; one that comes later finds the
    agent stopped (read with the call, after the lock) and claims nothing.
    """
    call = transitions.lock_call(call_id, hold_agent=True)
    if call is None or call.status != transitions.claim_source(call.risk):
        return None
    if code := cannot_run_code(call):
        _refuse(call, code)
        return None
    now = timezone.now()
    transitions.move(
        call,
        Status.EXECUTING,
        fence=call.fence,
        bump_fence=True,
        attempts=call.attempts + 1,
        # The ORM's lock (the embedded database: one machine, one clock) reads no clock.
        lease_until=lease_until(call.tool, getattr(call, "database_time", None) or now),
        started_at=now,
    )
    events.execution_started(call)
    return Claim(call=call, fence=call.fence)


def refuse_approved_for_stop(agent: Agent, reason: str, stopped_by: Any) -> list[str]:
    """At an agent's stop, fail each of its approved calls not yet claimed, unrun, as their
    claim would: a resume before a worker gets to one (its task queued behind others, its
    message lost until the re-send sweep) is no decision to run what the stop stopped.
    Cancels nothing (the stop's event lists its cancellations); each has its own
    ``call.execution_refused``.

    Registered with ``tools_registry.hooks`` (``ApprovalsConfig.ready``), inside the stop's
    transaction, which holds the agent's run lock: no claim is under way, and none comes
    before this commits, when it finds the call failed.
    """
    approved = ToolCall.objects.filter(agent=agent, status=Status.APPROVED)
    for call_id in approved.order_by("created_at").values_list("pk", flat=True):
        call = transitions.lock_call(call_id, status=Status.APPROVED)
        if call is not None:
            call.agent = agent  # as the stop leaves it: stopped, with its reason
            _refuse(call, "agent_stopped")
    return []


def _refuse(call: ToolCall, code: str) -> None:
    """Fail a call that may no longer run, without running it. The error carries the
    reason's code (``CANNOT_RUN``), and a stop's reason; the agent may retry a write once the
    tool or agent is back, except one a stop failed (a stop voids its approval) or one whose
    tool's policy changed otherwise meanwhile (``calls.retry_call``). Nothing ran this time, so nothing is escalated.

    Except a re-run, by reconciliation or a person, of a call whose earlier attempt's
    outcome was left open (it keeps that attempt's error; the agent's retry of a failed call
    clears it): that attempt may have had its effect, so the call is not "failed, it never
    ran" but unknown, and a person decides."""
    error = {"code": code, "message": CANNOT_RUN[code]}
    if code == "agent_stopped":
        error["reason"] = call.agent.stop_reason
    if call.attempts and call.error is not None:
        reason = (
            f"A re-run was refused ({CANNOT_RUN[code]}); whether an earlier attempt had its "
            "effect is not known: check the downstream, then mark the outcome."
        )
        transitions.move(
            call,
            Status.UNKNOWN,
            **attention(reason, for_good=True),
        )
        events.execution_refused(call, code=code, reason=CANNOT_RUN[code])
        events.call_escalated(call, reason=reason, finding="")
        return
    transitions.move(call, Status.FAILED, error=error, finished_at=timezone.now())
    events.execution_refused(call, code=code, reason=CANNOT_RUN[code])
