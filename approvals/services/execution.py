"""The executor's transitions: claim with a fence and a lease, finish under that fence, and
take a call away from a worker that went silent past its lease."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from approvals import events, notify, transitions
from approvals.models import Status, ToolCall
from approvals.services.common import CANNOT_RUN, cannot_run_code, move
from config import rows
from tools_registry.models import Agent, Tool
from tools_registry.policy import Risk

DESTRUCTIVE_FAILED = "A destructive call failed; a person must decide what happens next."


@dataclass(frozen=True)
class Claim:
    """A worker's exclusive right to run a call, valid while ``fence`` is current."""

    call_id: UUID
    fence: int
    attempt: int
    tool_name: str
    risk: str
    arguments: dict[str, Any]
    execution_key: str
    timeout: float
    max_attempts: int
    agent_name: str
    on_behalf_of: str
    # The tool policy's sensitive fields (admins may add to those declared in code).
    sensitive_fields: tuple[str, ...] = ()
    # The row as claimed, so that finishing writes its audit event without reading it again.
    call: ToolCall | None = field(default=None, repr=False, compare=False)


def handler_budget_seconds(*, timeout_seconds: float, max_attempts: int) -> float:
    """How long the handler may take: every attempt's timeout. The lease and the worker's
    time limits (``approvals.dispatch``) are measured from it."""
    return float(timeout_seconds) * max(int(max_attempts), 1)


def claim_source(risk: str) -> str:
    """The status a call is claimed from: reads run straight from intake, everything else
    only after approval."""
    return Status.RECEIVED if risk == Risk.READ else Status.APPROVED


def claim_call(*, call_id: UUID) -> Claim | None:
    """Take an approved (or a received read) call for execution; None if someone else has it,
    or if it may no longer run (then it fails here, see ``refuse_call``).

    The conditional UPDATE is the lock: ``WHERE status = <source>``. Of any number of
    deliveries of the same task exactly one matches; the others match nothing and write
    nothing (PostgreSQL re-checks the condition on the row a concurrent claim just
    changed). The claim and the intent audit event commit together, before the handler runs.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            call = _claim_returning(call_id)
        else:
            call = _claim_after_read(call_id)
        if call is not None:
            events.execution_started(call)
    if call is None:
        # A duplicate delivery or a call already done (refuse_call finds nothing to do), or
        # one approved while it could run whose tool or agent was switched off, or whose
        # tool changed, since: the approval does not cover that, so it fails unrun.
        refuse_call(call_id=call_id)
        return None
    tool = call.tool
    return Claim(
        call_id=call.pk,
        fence=call.fence,
        attempt=call.attempts,
        tool_name=tool.name,
        risk=call.risk,
        arguments=call.arguments,
        execution_key=call.execution_key,
        timeout=tool.timeout_seconds,
        max_attempts=tool.max_attempts,
        agent_name=call.agent.name,
        on_behalf_of=call.on_behalf_of,
        sensitive_fields=tuple(tool.sensitive_fields or ()),
        call=call,
    )


# One statement claims the call, checks that it may still run (the conditions of
# ``cannot_run_code``), sets the lease (``handler_budget_seconds`` + the grace) and returns
# the call with what running it needs of its tool and agent: no read before, none after.
_CLAIM_SQL = """
UPDATE approvals_toolcall AS c
   SET status = %(executing)s, fence = c.fence + 1, attempts = c.attempts + 1,
       lease_until = %(now)s + make_interval(
           secs => t.timeout_seconds * GREATEST(t.max_attempts, 1) + %(grace)s),
       started_at = %(now)s, updated_at = %(now)s
  FROM tools_registry_tool AS t, tools_registry_agent AS a
 WHERE c.id = %(id)s
   AND c.status = CASE WHEN c.risk = %(read)s THEN %(received)s ELSE %(approved)s END
   AND t.id = c.tool_id AND a.id = c.agent_id
   AND t.enabled AND t.in_code AND t.version = c.tool_version AND a.enabled
RETURNING c.*, t.name AS claimed_tool_name, t.timeout_seconds AS claimed_tool_timeout,
       t.max_attempts AS claimed_tool_max_attempts,
       t.sensitive_fields AS claimed_tool_sensitive_fields, a.name AS claimed_agent_name
"""


def _claim_returning(call_id: UUID) -> ToolCall | None:
    transitions.require(Status.APPROVED, Status.EXECUTING)
    transitions.require(Status.RECEIVED, Status.EXECUTING)
    params = {
        "id": call_id,
        "now": timezone.now(),
        "grace": float(settings.EXECUTOR_LEASE_GRACE_SECONDS),
        "executing": Status.EXECUTING,
        "read": Risk.READ,
        "received": Status.RECEIVED,
        "approved": Status.APPROVED,
    }
    call = next(iter(ToolCall.objects.raw(_CLAIM_SQL, params)), None)
    if call is None:
        return None
    row: Any = call  # the RETURNING clause's extra columns are attributes of the row
    db = call._state.db
    # The tool and the agent as far as the claim read them; any other field loads on access.
    call.tool = _partial(
        Tool,
        db,
        id=call.tool_id,
        name=row.claimed_tool_name,
        timeout_seconds=row.claimed_tool_timeout,
        max_attempts=row.claimed_tool_max_attempts,
        sensitive_fields=json.loads(row.claimed_tool_sensitive_fields),
        version=call.tool_version,
        enabled=True,
        in_code=True,
    )
    call.agent = _partial(Agent, db, id=call.agent_id, name=row.claimed_agent_name, enabled=True)
    return call


def _partial[M: Model](model: type[M], db: str | None, **values: Any) -> M:
    """A row of ``model`` of which only ``values`` were read, as Django builds them."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(db, names, [values[name] for name in names])


def _claim_after_read(call_id: UUID) -> ToolCall | None:
    """The claim on SQLite (the embedded mode): read, then ``UPDATE ... WHERE status =
    <source> AND fence = <as read>``. SQLite serialises writers, and its RETURNING cannot
    name the joined tool and agent."""
    call = ToolCall.objects.select_related("tool", "agent").filter(pk=call_id).first()
    if call is None:
        return None
    source = claim_source(call.risk)
    if call.status != source or cannot_run_code(call):
        return None
    transitions.require(source, Status.EXECUTING)
    tool = call.tool
    now = timezone.now()
    lease_seconds = handler_budget_seconds(
        timeout_seconds=tool.timeout_seconds, max_attempts=tool.max_attempts
    ) + float(settings.EXECUTOR_LEASE_GRACE_SECONDS)
    claimed_fields = {
        "status": Status.EXECUTING,
        "fence": call.fence + 1,
        "attempts": call.attempts + 1,
        "lease_until": now + timedelta(seconds=lease_seconds),
        "started_at": now,
        "updated_at": now,
    }
    claimed = ToolCall.objects.filter(pk=call_id, status=source, fence=call.fence).update(
        **claimed_fields
    )
    if not claimed:
        return None
    for name, value in claimed_fields.items():
        setattr(call, name, value)
    return call


@transaction.atomic
def refuse_call(*, call_id: UUID) -> ToolCall | None:
    """Fail an approved call (or a received read) that may no longer run, without running it;
    None if it is no longer waiting to run or may run after all.

    Under the row lock no claim can take the call meanwhile (a claim's UPDATE waits for the
    lock, then matches nothing). The error carries the reason's code (``CANNOT_RUN``); the
    agent may retry a write once the tool or agent is back. Nothing ran, so nothing is
    unknown and nothing is escalated, whatever the risk class.
    """
    call = (
        ToolCall.objects.select_for_update(of=("self",))
        .select_related("tool", "agent")
        .filter(pk=call_id)
        .first()
    )
    if call is None or call.status != claim_source(call.risk):
        return None
    code = cannot_run_code(call)
    if not code:
        return None
    now = timezone.now()
    move(
        call,
        Status.FAILED,
        error={"code": code, "message": CANNOT_RUN[code]},
        finished_at=now,
    )
    events.execution_refused(call, code=code, reason=CANNOT_RUN[code])
    return call


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | failed | unknown
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    latency_ms: int = 0
    tries: int = 1


def finish_call(*, claim: Claim, outcome: Outcome) -> bool:
    """Store the outcome if the claim is still current; False for a stale (fenced-off) worker."""
    transitions.require(Status.EXECUTING, outcome.status)
    now = timezone.now()
    escalate = outcome.status == Status.FAILED and claim.risk == Risk.DESTRUCTIVE
    finished_fields = {
        "status": outcome.status,
        "result": outcome.result,
        "error": outcome.error,
        "latency_ms": outcome.latency_ms,
        "lease_until": None,
        "finished_at": now,
        "updated_at": now,
        "needs_attention": escalate,
        "attention_reason": DESTRUCTIVE_FAILED if escalate else "",
    }
    with transaction.atomic():
        if not _store_outcome(claim, finished_fields):
            current = ToolCall.objects.select_related("tool", "agent").get(pk=claim.call_id)
            events.stale_result_discarded(current, claim_fence=claim.fence, outcome=outcome)
            return False
        call = claim.call or ToolCall.objects.select_related("tool", "agent").get(pk=claim.call_id)
        for name, value in finished_fields.items():
            setattr(call, name, value)
        events.execution_finished(call, outcome=outcome)
        if escalate:
            # Never retried automatically: the call waits on the "needs attention" page.
            events.call_escalated(call, reason=DESTRUCTIVE_FAILED)
        notify.status_changed(call)
    return True


def _store_outcome(claim: Claim, values: dict[str, Any]) -> bool:
    """The fenced UPDATE of ``finish_call``, through ``config.rows``: with the ORM's
    ``update()`` composing it each time it took three times the CPU (1.0 against 0.3 ms)."""
    where = {"id": claim.call_id, "fence": claim.fence, "status": Status.EXECUTING}
    return rows.update(ToolCall, values, where=where) == 1


LEASE_EXPIRED_WRITE = (
    "The worker running the call went silent past its lease; whether the effect happened "
    "is being checked with the downstream system."
)
LEASE_EXPIRED_READ = "The worker running the read went silent past its lease."


def expire_lease(*, call_id: UUID, now: datetime | None = None) -> ToolCall | None:
    """Take a call away from a worker that went silent past its lease; None if not due.

    A write becomes ``unknown``: its effect may or may not have happened, and the
    reconciliation sweep asks the downstream. A read has no effect, so it fails. The fence
    moves on in the same UPDATE, so the silent worker's late ``finish_call`` (a paused or
    partitioned process that wakes up) matches no row and is discarded.
    """
    now = now or timezone.now()
    with transaction.atomic():
        call = (
            ToolCall.objects.select_for_update(of=("self",))
            .select_related("tool", "agent")
            .filter(pk=call_id, status=Status.EXECUTING, lease_until__lt=now)
            .first()
        )
        if call is None:
            return None
        claim_fence = call.fence
        is_read = call.risk == Risk.READ
        move(
            call,
            Status.FAILED if is_read else Status.UNKNOWN,
            fence=claim_fence + 1,
            lease_until=None,
            error={
                "code": "lease_expired",
                "message": LEASE_EXPIRED_READ if is_read else LEASE_EXPIRED_WRITE,
            },
            finished_at=now if is_read else None,
        )
        events.lease_expired(call, claim_fence=claim_fence)
    return call
