"""Intake, agent requests and expiry: the transitions that do not need a reviewer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals import events, screening, transitions
from approvals.execution import send
from approvals.guards import Refused, arguments_hash, cannot_run_reason, policy_changed
from approvals.models import StandingApproval, Status, ToolCall, Transport
from approvals.services import standing
from approvals.transitions import lock_call, move
from audit.models import AuditEvent
from tools_registry.models import Agent, Tool
from tools_registry.policy import Risk, read_run_seconds


# No savepoint: intake calls this inside its own transaction, which a failure here aborts.
@transaction.atomic(savepoint=False)
def create_call(
    *,
    agent: Agent,
    tool: Tool,
    arguments: dict[str, Any],
    session_id: str,
    request_key: str,
    on_behalf_of: str = "",
    end_user_roles: tuple[str, ...] = (),
    end_user_source: str = "",
    end_user_aliases: tuple[str, ...] = (),
    reasoning: str = "",
    token_cost: dict[str, Any] | None = None,
    callback_url: str = "",
    transport: str = Transport.REST,
    client: str = "",
    standing_candidates: list[StandingApproval] | None = None,
) -> ToolCall:
    """Store a validated call: a read stays ``received`` (it runs at once), the rest wait
    for reviewers, unless a policy rule or a standing approval approves them at once.
    ``standing_candidates``: the agent's live standing approvals of the tool, if the caller
    read them already (``standing.use``). ``end_user_aliases``: the other names of a verified
    user (``role_scopes.EndUser.aliases``), which separation of duties knows them by too.

    Raises ``screening.RefusedByRule`` (nothing stored) when a policy rule refuses it.
    """
    now = timezone.now()
    roles = list(end_user_roles)
    screened = screening.screen(
        agent=agent,
        tool=tool,
        arguments=arguments,
        reasoning=reasoning,
        user_id=on_behalf_of,
        user_roles=roles,
        at=now,
    )
    bound_hash = arguments_hash(tool_name=tool.name, tool_version=tool.version, arguments=arguments)
    standing_approval = None
    if tool.needs_approval and not screened.by_rule and screened.reviewable_by_standing_approval:
        standing_approval = standing.use(
            tool=tool,
            agent=agent,
            arguments=arguments,
            arguments_hash=bound_hash,
            signals=[f.code for f in screened.signals],
            user_id=on_behalf_of,
            user_aliases=end_user_aliases,
            user_roles=roles,
            now=now,
            candidates=standing_candidates,
        )
    money = screened.facts.money
    call = ToolCall(
        agent=agent,
        agent_owner_id=agent.owner_id,
        tool=tool,
        tool_version=tool.version,
        risk=tool.risk,
        arguments=arguments,
        arguments_hash=bound_hash,
        session_id=session_id,
        on_behalf_of=on_behalf_of,
        end_user_roles=list(end_user_roles),
        end_user_source=end_user_source,
        end_user_aliases=list(end_user_aliases),
        reasoning=reasoning,
        token_cost=token_cost,
        callback_url=callback_url,
        request_key=request_key,
        transport=transport,
        client=client[:200],
        approvals_required=screened.approvals_required,
        policy=screened.policy(tool),
        signals=[f.as_dict() for f in screened.signals],
        amount_minor=money.minor if money else None,
        currency=money.currency if money else "",
        standing_approval=standing_approval,
        expires_at=(
            now + timedelta(seconds=tool.approval_ttl_seconds) if tool.needs_approval else None
        ),
        created_at=now,
    )
    move(call, Status.PENDING if tool.needs_approval else Status.RECEIVED)
    events.call_submitted(call)
    if screened.by_rule or standing_approval is not None:
        # Approved in the transaction that stored it: no reviewer, and the audit trail says
        # by which rule of which policy version, or by whose standing approval.
        send.approve(call, decided_at=now)
        events.call_approved_without_reviewer(call, standing=standing_approval)
    return call


@transaction.atomic
def cancel_call(
    *, call_id: UUID, agent: Agent, stop_reason: str = "", stopped_by: Any = None
) -> ToolCall:
    """The agent withdraws a call that is still waiting for a decision; or, with a
    ``stop_reason``, the call is cancelled because a person stopped its agent (the call's
    error then says so, for the agent's webhook and the reviewers).

    Cancelling a cancelled call changes nothing, so an agent may repeat the request.
    """
    call = lock_call(call_id, agent=agent)
    if call is None:
        raise ToolCall.DoesNotExist
    if call.status == Status.CANCELLED:
        return call
    if call.status != Status.PENDING:
        raise transitions.InvalidTransition(call.status, Status.CANCELLED)
    fields: dict[str, Any] = {"decided_at": timezone.now()}
    if stop_reason:
        fields["error"] = {
            "code": "agent_stopped",
            "message": f"The agent was stopped before anyone decided: {stop_reason}",
            "reason": stop_reason,
        }
    move(call, Status.CANCELLED, **fields)
    events.call_cancelled(call, stopped_by=stopped_by, reason=stop_reason)
    return call


def cancel_for_stop(agent: Agent, reason: str, stopped_by: Any) -> list[str]:
    """Cancel every call of a stopped agent that waits for a decision; their ids.

    Registered with ``tools_registry.hooks`` (``ApprovalsConfig.ready``): runs inside the
    stop's transaction, which holds the agent's run lock, so no new call can join the
    list while it is cancelled. A call decided meanwhile is left to its decision (an
    approved one is refused at the claim: its agent is stopped).
    """
    cancelled = []
    waiting = ToolCall.objects.filter(agent=agent, status=Status.PENDING).order_by("created_at")
    for call_id in waiting.values_list("pk", flat=True):
        try:
            call = cancel_call(
                call_id=call_id, agent=agent, stop_reason=reason, stopped_by=stopped_by
            )
        except transitions.InvalidTransition:
            continue
        if (call.error or {}).get("code") == "agent_stopped":  # not withdrawn by the agent
            cancelled.append(str(call_id))
    return cancelled


STOPPED_BEFORE_IT_RAN = (
    "The agent was stopped before this call ran, and a stop voids its approval: if the "
    "effect is still wanted, make a new call, which needs its own approval."
)


RETRIES_SPENT = (
    "This call was already retried {retried} times under its approval, the most allowed "
    "(EXECUTOR_AGENT_RETRIES): if the effect is still wanted, make a new call, which needs "
    "its own approval."
)


POLICY_CHANGED = (
    "The tool's policy changed since this call was approved (it was approved under version "
    "{then}, the policy is now version {now}): its approval does not cover a re-run under the "
    "new one. If the effect is still wanted, make a new call, which is screened and approved "
    "under the current policy."
)


def only_switched_off_and_on(call: ToolCall) -> bool:
    """Whether every change of the call's tool's policy since the call was approved under it
    switched the tool off or on, and nothing else: the claim refuses a call while its tool
    is off (``tool_disabled``), and the agent may retry it once the tool is back, on the
    approval it had. Read from the audit trail, which keeps each change with the version it
    made (``tool.policy_changed``); a version bumped without such an event (a sync from
    code, an upstream's) counts as a change of the policy: fail closed."""
    then, now = (call.policy or {}).get("version"), call.tool.policy_version
    if not isinstance(then, int) or then >= now:
        return False
    changes = list(
        AuditEvent.objects.filter(
            action="tool.policy_changed",
            tool_name=call.tool.name,
            data__policy_version__gt=then,
            data__policy_version__lte=now,
        ).values_list("data", flat=True)
    )
    return len(changes) == now - then and all(
        set((change or {}).get("after") or {}) == {"enabled"} for change in changes
    )


def retries_of(call: ToolCall) -> int:
    """How many times the agent has had the call run again (``retry_call``), from the audit
    trail, which keeps each one (``call.retry_requested``)."""
    return AuditEvent.objects.filter(call_id=call.pk, action="call.retry_requested").count()


class RetryRefused(Refused):
    """The call may not be re-run on the agent's request; ``new_call`` when a new call (with
    its own approval) is the way to the effect, rather than a person's decision."""

    code = "retry_not_allowed"

    def __init__(self, message: str, *, new_call: bool = False):
        super().__init__(message)
        self.new_call = new_call


@transaction.atomic
def retry_call(
    *, call_id: UUID, agent: Agent, admit: Callable[[ToolCall], None] | None = None
) -> ToolCall:
    """Run a failed write again, with its original execution key (``countersign-<id>``).

    The downstream refuses a second effect under the same key, so a re-run can never
    double what the failed attempt might have done. Destructive calls are never re-run on
    an agent's request: their failure is escalated to a person. A call that is already
    approved or executing again is returned as it is, so the request may be repeated. Each
    retry runs on the call's one approval: at most ``EXECUTOR_AGENT_RETRIES`` of them, and
    only while the tool's policy is the one it was approved under (``policy_changed``; the
    tool switched off and on again meanwhile changed nothing it was approved for).

    ``admit`` (the edge's circuit breaker) is asked only once the call will run again, after
    every reason to refuse: what it raises leaves the call as it was.
    """
    # The agent's run lock first, as a submission and a claim take it: a retry that meets a
    # stop under way waits for it and finds the agent stopped, instead of approving the call
    # past the stop (to run after a resume).
    call = lock_call(call_id, agent=agent, hold_agent=True)
    if call is None:
        raise ToolCall.DoesNotExist
    if call.risk == Risk.DESTRUCTIVE:
        raise RetryRefused("Destructive calls are never retried automatically; a person decides.")
    if call.risk == Risk.READ:
        raise RetryRefused("A read has no effect to protect: submit it again with a new key.")
    if call.status in (Status.APPROVED, Status.EXECUTING):
        return call
    # Only from failed: pending -> approved is a reviewer's move, never the agent's.
    if call.status != Status.FAILED:
        raise transitions.InvalidTransition(call.status, Status.APPROVED)
    if reason := cannot_run_reason(call):
        raise RetryRefused(reason)
    if (call.error or {}).get("code") == "agent_stopped":
        # The stop failed it unrun (``claim.refuse_approved_for_stop``, or its claim found
        # the agent stopped): a stop voids what was decided for the agent before it, and the
        # agent that was stopped must not bring back, after its resume, the approval the
        # stop took away. A call still wanted is a new call, with its own approval.
        raise RetryRefused(STOPPED_BEFORE_IT_RAN, new_call=True)
    if policy_changed(call) and not only_switched_off_and_on(call):
        # Each retry runs on the approval given under the policy of its time, which nobody
        # sees again: a rule added since to refuse such calls, or to ask for more approvals,
        # a team or a confirmation, would never be asked of it. (The claim refuses a call
        # whose tool's definition changed, ``cannot_run_reason``, the same way.)
        raise RetryRefused(
            POLICY_CHANGED.format(
                then=(call.policy or {}).get("version", "unknown"), now=call.tool.policy_version
            ),
            new_call=True,
        )
    if (retried := retries_of(call)) >= settings.EXECUTOR_AGENT_RETRIES:
        # Each retry runs under the reviewers' one approval, which nobody sees again: an
        # agent looping on a failing write must not run it for ever on that approval.
        raise RetryRefused(RETRIES_SPENT.format(retried=retried), new_call=True)
    if admit is not None:
        admit(call)
    previous_error = call.error
    send.approve(call, error=None, result=None)
    events.retry_requested(call, agent=agent, previous_error=previous_error)
    return call


def expire_locked(call: ToolCall, *, now: Any) -> None:
    move(call, Status.EXPIRED, decided_at=now)
    events.call_expired(call)


@transaction.atomic
def expire_call(*, call_id: UUID, now: Any = None, skip_locked: bool = False) -> bool:
    """Expire a pending call whose approval TTL has passed; False if it was not due (or,
    with ``skip_locked``, if another transaction holds it: the sweep looks again later)."""
    now = now or timezone.now()
    call = lock_call(call_id, skip_locked=skip_locked)
    if (
        call is None
        or call.status != Status.PENDING
        or not call.expires_at
        or call.expires_at > now
    ):
        return False
    expire_locked(call, now=now)
    return True


ABANDONED_READ = (
    "The read was never run: the request that received it ended before running it. "
    "Nothing ran; send the call again with a new Idempotency-Key."
)
ABANDONED = "abandoned"  # the error code of such a read


def abandoned_after(call: ToolCall) -> datetime:
    """When a read still ``received`` is certainly abandoned: its request would have run it
    at once, and no run of it under its tool's policy lasts this long."""
    run = read_run_seconds(
        timeout_seconds=call.tool.timeout_seconds, max_attempts=call.tool.max_attempts
    )
    return call.created_at + timedelta(seconds=run + settings.EXECUTOR_LEASE_GRACE_SECONDS)


@transaction.atomic
def fail_abandoned_read(
    *, call_id: UUID, now: datetime | None = None, skip_locked: bool = False
) -> ToolCall | None:
    """Fail a read left ``received`` by a request that died before running it; None if it
    is not (or no longer) abandoned, or, with ``skip_locked``, if another transaction holds
    it. Its Idempotency-Key then answers with that failure.

    The row lock orders this against the executor's claim (which locks the row too): a
    claim that comes later, from a process that was only paused, finds the read failed and
    runs nothing, so the handler never runs for a call that was answered as failed.
    """
    now = now or timezone.now()
    call = lock_call(call_id, skip_locked=skip_locked, status=Status.RECEIVED, risk=Risk.READ)
    if call is None or now < abandoned_after(call):
        return None
    move(
        call,
        Status.FAILED,
        error={"code": ABANDONED, "message": ABANDONED_READ},
        finished_at=now,
    )
    events.read_abandoned(call, waited_seconds=(now - call.created_at).total_seconds())
    return call
