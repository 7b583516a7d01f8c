"""Reconciliation: settling an ``unknown`` outcome by asking the downstream system.

A call is ``unknown`` when its worker died or its handler timed out: the effect may or may
not have happened. The handler's ``lookup(idempotency_key)`` asks the downstream:

* found: the effect happened; the call succeeded, with the downstream's result;
* not found, and the downstream refuses a second effect for the same key: run it again
  with the same key (``unknown -> approved``). Even if the first attempt is still in
  flight somewhere (a paused worker), the downstream keeps one effect. Destructive calls
  are never re-run by themselves, and automatic re-runs are capped
  (``EXECUTOR_AUTO_RERUNS``);
* cannot tell (no lookup, the lookup failed or said so), but the downstream answers a
  repeat of a key with the first attempt's outcome (``rerun_reconciles``: an HTTP upstream
  whose idempotency header an admin named, Stripe's semantics): sending the call again with
  the same key is the reconciliation, so it is re-run as above;
* otherwise the call stays ``unknown`` and is escalated to a person, who marks the real
  outcome or re-runs it (``services.attention``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals import events
from approvals.execution import send
from approvals.guards import (
    attention,
    attention_reason,
    cannot_run_code,
    left_to_a_person,
    may_not_run_now,
)
from approvals.models import Status, ToolCall
from approvals.transitions import lock_call, move
from core.json_values import storable
from tools_registry import registry, sources
from tools_registry.models import Agent
from tools_registry.policy import Risk
from tools_registry.registry import ToolContext

logger = logging.getLogger(__name__)

FOUND = "found"
NOT_FOUND = "not_found"
CANNOT_TELL = "cannot_tell"
NO_LOOKUP = "no_lookup"
LOOKUP_FAILED = "lookup_failed"


@dataclass(frozen=True)
class Reconciliation:
    call_id: UUID
    finding: str  # found | not_found | cannot_tell | no_lookup | lookup_failed ("" if skipped)
    action: str  # succeeded | rerun | escalated | unchanged | skipped


def reconcile_call(
    *,
    call_id: UUID,
    now: datetime | None = None,
    actor: Any = None,
    allow_rerun: bool = True,
    skip_locked: bool = False,
) -> Reconciliation:
    """Ask the downstream what happened to an ``unknown`` call and act on the answer.

    The lookup runs with no transaction open (it may be an HTTP call). The decision is then
    applied under the row lock, only if the call is still ``unknown`` with the fence seen
    before the lookup: a person or another sweep that moved it meanwhile wins.
    ``allow_rerun=False`` (a person's "ask again") never re-runs by itself. With
    ``skip_locked`` (the sweep) a call another transaction holds is skipped, not waited for.
    """
    now = now or timezone.now()
    seen = ToolCall.objects.select_related("tool__upstream", "agent").filter(pk=call_id).first()
    if seen is None or seen.status != Status.UNKNOWN:
        return Reconciliation(call_id=call_id, finding="", action="skipped")
    finding, result = ask_downstream(seen)

    with transaction.atomic():
        call = lock_call(call_id, skip_locked=skip_locked)
        if call is None or call.status != Status.UNKNOWN or call.fence != seen.fence:
            return Reconciliation(call_id=call_id, finding=finding, action="skipped")
        if finding == FOUND:
            move(
                call,
                Status.SUCCEEDED,
                result=result,
                error=None,
                finished_at=now,
                **attention(),
            )
            events.call_reconciled(call, finding=finding, actor=actor)
            return Reconciliation(call_id=call_id, finding=finding, action="succeeded")
        if left_to_a_person(call):
            # Escalated as it could not run (say its agent was stopped): a resume since is
            # not a decision to re-run it. Only the effect found (above) settles it.
            call.save(update_fields=["updated_at"])
            return Reconciliation(call_id=call_id, finding=finding, action="unchanged")
        if allow_rerun and _rerun_settles(call, finding) and may_rerun_by_itself(call):
            send.approve(call, lease_until=None, **attention())
            events.call_reconciled(call, finding=finding, actor=actor)
            events.call_rerun(call, previous_status=Status.UNKNOWN)
            return Reconciliation(call_id=call_id, finding=finding, action="rerun")
        reason = escalation_reason(call, finding)
        # It could not run now (its agent stopped, its tool switched off...): whatever
        # happens to that later, a person decides.
        for_good = bool(cannot_run_code(call))
        if call.needs_attention and call.attention_reason == attention_reason(reason):
            # Asked again, nothing new: only the time of the check moves.
            call.save(update_fields=["updated_at"])
            return Reconciliation(call_id=call_id, finding=finding, action="unchanged")
        escalate_locked(call, reason=reason, finding=finding, for_good=for_good)
        return Reconciliation(call_id=call_id, finding=finding, action="escalated")


def leave_unknown_to_a_person(agent: Agent, reason: str, stopped_by: Any) -> list[str]:
    """At an agent's stop, leave each of its calls whose outcome is unknown to a person:
    reconciliation would find the stop at its next check and do the same, but a resume
    before then is not a decision to re-run them (docs/exactly-once.md). Cancels nothing.

    Registered with ``tools_registry.hooks`` (``ApprovalsConfig.ready``), inside the stop's
    transaction, before the agent's row is marked stopped. A call another transaction holds
    right now is waited for, as the stop's cancellations wait for a pending one: a check
    holding it may leave it unknown, escalated but not to a person for good, and a resume
    before the next check would then let that check re-run it.
    """
    unknown = ToolCall.objects.filter(agent=agent, status=Status.UNKNOWN, left_to_person=False)
    for call_id in unknown.order_by("created_at").values_list("pk", flat=True):
        call = lock_call(call_id, status=Status.UNKNOWN)
        if call is not None and not left_to_a_person(call):
            escalate_locked(call, reason=may_not_run_now("agent_stopped"), for_good=True)
    return []


def ask_downstream(call: ToolCall) -> tuple[str, dict[str, Any] | None]:
    """The handler's lookup for the call's idempotency key: (finding, result if found)."""
    try:
        spec = sources.implementation(call.tool)
    except registry.UnknownTool:
        return NO_LOOKUP, None
    if spec.lookup_fn is None:
        return NO_LOOKUP, None
    ctx = ToolContext(
        call_id=call.pk,
        idempotency_key=call.execution_key,
        timeout=call.tool.timeout_seconds,
        attempt=call.attempts,
        agent_name=call.agent.name,
        on_behalf_of=call.on_behalf_of,
    )
    try:
        answer = spec.lookup_fn(ctx)
        if answer.found is True:
            # Kept whatever it holds: a NUL from an upstream must not fail the move (and
            # keep every call after this one waiting behind it in the sweep).
            found = storable(dict(answer.result or {}))
            # A value JSON cannot hold (a code tool's datetime or Decimal) failed the move on
            # every check, the call never escalated: a lookup that answers so has failed,
            # and a person is told (as a handler's result is checked, runner._checked_result).
            json.dumps(found)
            return FOUND, found
    except Exception:
        logger.warning("lookup of call %s failed", call.pk, exc_info=True)
        return LOOKUP_FAILED, None
    if answer.found is False:
        return NOT_FOUND, None
    return CANNOT_TELL, None


def _rerun_settles(call: ToolCall, finding: str) -> bool:
    """Whether running the call again with its key settles what ``finding`` left open."""
    if finding == NOT_FOUND:
        return True
    if finding == FOUND:
        return False
    try:
        return sources.implementation(call.tool).rerun_reconciles
    except registry.UnknownTool:
        return False


def may_rerun_by_itself(call: ToolCall) -> bool:
    """A not-found effect is re-run without a person only when a repeat cannot double it."""
    try:
        spec = sources.implementation(call.tool)
    except registry.UnknownTool:
        return False
    return (
        spec.honours_idempotency_key
        and call.risk != Risk.DESTRUCTIVE
        and not cannot_run_code(call)  # the tool or agent switched off, the tool changed
        and call.attempts < 1 + settings.EXECUTOR_AUTO_RERUNS
    )


def refuses_repeats(call: ToolCall) -> bool:
    """Whether the call's downstream refuses a second effect for its key, so that running
    it again cannot double it: declared by a code tool, an admin's setting of an upstream
    (``sources.reruns_without_a_person``)."""
    try:
        return sources.implementation(call.tool).honours_idempotency_key
    except registry.UnknownTool:
        return False


def escalation_reason(call: ToolCall, finding: str) -> str:
    """What the person on the "needs attention" page is told."""
    if finding != FOUND and (code := cannot_run_code(call)):
        return may_not_run_now(code)
    if finding == NOT_FOUND:
        if call.risk == Risk.DESTRUCTIVE:
            return (
                "The downstream has no record of the effect. A destructive call runs once: "
                "mark it failed; if the effect is still wanted, the agent proposes a new call."
            )
        if not call.tool.runnable:
            return "The downstream has no record of the effect, and the tool is disabled."
        if not refuses_repeats(call):
            return (
                "The downstream has no record of the effect, but it does not refuse "
                "duplicates, so it is not re-run automatically."
            )
        if call.attempts >= 1 + settings.EXECUTOR_AUTO_RERUNS:
            return f"The outcome stayed unknown after {call.attempts} attempts."
        return "The downstream has no record of the effect."
    if finding == NO_LOOKUP:
        return (
            "The tool cannot say whether the effect happened; check the downstream system, "
            "then mark the outcome."
        )
    return "The downstream could not say whether the effect happened."


def escalate_locked(
    call: ToolCall, *, reason: str, finding: str = "", for_good: bool = False
) -> None:
    """Put a call (held locked by the caller) on the "needs attention" page; ``for_good``:
    left to a person whatever the downstream says next, short of the effect found
    (``guards.left_to_a_person``)."""
    on = attention(reason, for_good=for_good)
    for name, value in on.items():
        setattr(call, name, value)
    call.save(update_fields=[*on, "updated_at"])
    events.call_escalated(call, reason=reason, finding=finding)
    logger.warning("call %s needs a person: %s", call.pk, reason)
