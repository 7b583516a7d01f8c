"""One small factory per audit event of a tool call's life."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from approvals import hidden
from approvals.models import Decision, ToolCall
from audit.log import record
from audit.masking import keyed_digest, masked
from audit.models import AuditEvent


def _sensitive(call: ToolCall) -> list[str]:
    """The paths masked whole in the trail: a secret field is kept from auditors as much as
    a sensitive one (reviewers see neither in clear without an audited reveal)."""
    return call.tool.hidden_fields


def _quoting(call: ToolCall, words: str) -> str:
    """What a person wrote about the call (a comment, a note), with the values of its hidden
    fields masked where it quotes them: one who may reveal them saw them."""
    return hidden.quoted(words, call.tool, call.arguments)


def call_submitted(call: ToolCall) -> AuditEvent:
    return record(
        later=True,  # with the COMMIT: every call writes it
        action="call.submitted",
        actor=call.agent,
        outcome=call.status,
        call=call,
        sensitive_fields=[f"arguments.{f}" for f in _sensitive(call)],
        data={
            "tool_version": call.tool_version,
            "risk": call.risk,
            "arguments": call.arguments,
            "arguments_hash": keyed_digest(call.arguments_hash),
            "on_behalf_of": call.on_behalf_of,
            "end_user_roles": call.end_user_roles,
            "end_user_source": call.end_user_source,
            # Personal data, each masked whole to its keyed fingerprint: a preferred_username
            # no detector knows says who the user is as much as an e-mail address does.
            "end_user_aliases": [masked("field", name) for name in call.end_user_aliases],
            "reasoning": hidden.quoted(call.reasoning, call.tool, call.arguments),
            "token_cost": call.token_cost,
            "transport": call.transport,
            "client": call.client,
            "approvals_required": call.approvals_required,
            "expires_at": call.expires_at.isoformat() if call.expires_at else None,
            # The policy the call is bound to (version, the rule that applied) and the
            # risk signals it raised: what the reviewers will be shown.
            "policy": call.policy,
            "signals": call.signals,
        },
    )


def call_approved_without_reviewer(call: ToolCall, *, standing: Any = None) -> AuditEvent:
    """Approved at intake by a policy rule, or by a reviewer's standing approval."""
    if standing is not None:
        data = {
            "by": "standing_approval",
            "standing_approval": standing.pk,
            "granted_by": standing.granted_by.get_username(),
            "uses": standing.uses,
            "max_uses": standing.max_uses,
        }
        actor = standing.granted_by
    else:
        rule = (call.policy or {}).get("rule") or {}
        data = {
            "by": "rule",
            "rule": rule.get("number"),
            "when": rule.get("when"),
            "policy_version": (call.policy or {}).get("version"),
        }
        actor = None
    return record(
        action="call.approved",
        outcome="approved",
        call=call,
        actor=actor,
        data={"approvals": 0, **data},
        people=("granted_by",),
    )


def arguments_edited(
    call: ToolCall, *, reviewer: Any, before: Any, before_hash: str, reset: int
) -> AuditEvent:
    """A reviewer corrected the arguments: the originals stay here, masked like any."""
    sensitive = [f"{side}.{f}" for side in ("before", "after") for f in _sensitive(call)]
    return record(
        action="call.arguments_edited",
        actor=reviewer,
        outcome="edited",
        call=call,
        sensitive_fields=sensitive,
        data={
            "before": before,
            "after": call.arguments,
            "before_hash": keyed_digest(before_hash),
            "arguments_hash": keyed_digest(call.arguments_hash),
            "approvals_reset": reset,
            "approvals_required": call.approvals_required,
            "signals": call.signals,
        },
    )


def note_added(call: ToolCall, *, author: Any, text: str) -> AuditEvent:
    return record(
        action="call.note_added",
        actor=author,
        outcome="noted",
        call=call,
        data={"note": _quoting(call, text)},
    )


def decision_recorded(
    call: ToolCall,
    decision: Decision,
    *,
    approvals: int,
    confirmation: str = "",
    authenticated_at: datetime | None = None,
) -> AuditEvent:
    extra: dict[str, Any] = {}
    if confirmation:
        # A destructive approval: what the reviewer typed, and the sign-in it relied on.
        extra = {
            "typed_confirmation": confirmation,
            "authenticated_at": authenticated_at.isoformat() if authenticated_at else None,
        }
    return record(
        action="call.decision",
        actor=decision.reviewer,
        outcome=decision.verdict,
        call=call,
        data={
            "comment": _quoting(call, decision.comment),
            # Exactly what the reviewer decided on: the bound hash and the policy in force.
            "arguments_hash": keyed_digest(decision.arguments_hash),
            "policy_version": decision.policy_version,
            "approvals": approvals,
            "approvals_required": call.approvals_required,
            "edited": decision.edited,
            # The state of the world the reviewer was shown beside the call (masked), and
            # its hash, so an auditor sees the same view.
            "shown_state": decision.shown_state,
            "shown_state_hash": keyed_digest(decision.shown_state_hash),
            **extra,
        },
    )


def call_approved(call: ToolCall, *, approvals: int) -> AuditEvent:
    return record(
        action="call.approved", outcome="approved", call=call, data={"approvals": approvals}
    )


def call_rejected(call: ToolCall, decision: Decision) -> AuditEvent:
    return record(
        action="call.rejected",
        actor=decision.reviewer,
        outcome="rejected",
        call=call,
        data={"comment": _quoting(call, decision.comment)},
    )


def call_cancelled(call: ToolCall, *, stopped_by: Any = None, reason: str = "") -> AuditEvent:
    """The agent withdrew its call; or, with a ``reason``, a person stopped the agent."""
    if not reason:
        return record(action="call.cancelled", actor=call.agent, outcome="cancelled", call=call)
    return record(
        action="call.cancelled",
        actor=stopped_by,
        outcome="cancelled",
        call=call,
        data={"agent_stopped": True, "reason": reason},
    )


def call_expired(call: ToolCall) -> AuditEvent:
    return record(
        action="call.expired",
        outcome="expired",
        call=call,
        data={"expires_at": call.expires_at.isoformat() if call.expires_at else None},
    )


def execution_started(call: ToolCall) -> AuditEvent:
    """The intent: committed with the claim, before the handler runs."""
    return record(
        later=True,  # with the COMMIT: every call writes it
        action="call.execution_started",
        outcome="executing",
        call=call,
        sensitive_fields=[f"arguments.{f}" for f in _sensitive(call)],
        data={
            "tool_version": call.tool_version,
            "arguments": call.arguments,
            "agent": call.agent.name,
            "session_id": call.session_id,
            "reasoning": hidden.quoted(call.reasoning, call.tool, call.arguments),
            "idempotency_key": call.execution_key,
            "attempt": call.attempts,
            "fence": call.fence,
        },
    )


def _echoed(call: ToolCall, *outcome: Any) -> list[Any]:
    """A result and an error with the values of the call's hidden fields masked wherever
    the downstream echoed them (a record that quotes the new name under another path)."""
    kept = hidden.values(call.tool, call.arguments)
    return [hidden.value(data, kept) for data in outcome]


def execution_finished(call: ToolCall, *, tries: int) -> AuditEvent:
    """The result, as stored on the call by the finish."""
    return record(
        later=True,  # with the COMMIT: every call writes it
        action="call.execution_finished",
        outcome=call.status,
        call=call,
        sensitive_fields=[f"result.{f}" for f in _sensitive(call)],
        data=_outcome(call, tries=tries),
    )


def _outcome(call: ToolCall, *, tries: int) -> dict[str, Any]:
    """An execution's outcome as the trail keeps it: the result and error as stored on the
    call, with the hidden values the downstream echoed masked."""
    result, error = _echoed(call, call.result, call.error)
    return {
        "status": call.status,
        "latency_ms": call.latency_ms,
        "tries": tries,
        "result": result,
        "error": error,
        "token_cost": call.token_cost,
        "fence": call.fence,
    }


def execution_refused(call: ToolCall, *, code: str, reason: str) -> AuditEvent:
    """The claim found the call may no longer run; it failed without its handler running."""
    return record(
        action="call.execution_refused",
        outcome=call.status,
        call=call,
        data={
            "code": code,
            "reason": reason,
            "tool_version": call.tool_version,
            "current_tool_version": call.tool.version,
            "tool_enabled": call.tool.runnable,
            "agent_enabled": call.agent.enabled,
            "agent_stopped": call.agent.stopped_at is not None,
        },
    )


def stale_result_discarded(call: ToolCall, *, claim_fence: int, outcome_status: str) -> AuditEvent:
    return record(
        action="call.stale_result_discarded",
        outcome=outcome_status,
        call=call,
        data={"claim_fence": claim_fence, "current_fence": call.fence, "status_now": call.status},
    )


def late_result_accepted(call: ToolCall, *, claim_fence: int, tries: int) -> AuditEvent:
    """A worker that lost its lease came back with its handler's verdict while nothing else
    had acted on the call: the result, stored as ``execution_finished`` stores one."""
    return record(
        action="call.late_result_accepted",
        outcome=call.status,
        call=call,
        sensitive_fields=[f"result.{f}" for f in _sensitive(call)],
        data={**_outcome(call, tries=tries), "claim_fence": claim_fence, "attempt": call.attempts},
    )


def retry_requested(call: ToolCall, *, agent: Any, previous_error: Any) -> AuditEvent:
    """The agent asked to run its failed write again; the error it failed with is masked
    as the result's event masked it (hidden values the downstream echoed)."""
    return call_event(
        call,
        "call.retry_requested",
        actor=agent,
        outcome="approved",
        previous_error=_echoed(call, previous_error)[0],
        attempt=call.attempts + 1,
        idempotency_key=call.execution_key,
    )


def call_event(
    call: ToolCall, action: str, *, actor: Any = None, outcome: str = "", **data: Any
) -> AuditEvent:
    """Any other event about one call (reconciliation, escalation, retries)."""
    return record(action=action, actor=actor, outcome=outcome, call=call, data=data)


def arguments_revealed(call: ToolCall, *, reviewer: Any, reason: str) -> AuditEvent:
    return record(
        action="call.arguments_revealed",
        actor=reviewer,
        outcome="revealed",
        call=call,
        # Once they have seen the values, their next reason may quote them.
        data={"reason": _quoting(call, reason), "sensitive_fields": _sensitive(call)},
    )


def _notification_sent(
    call: ToolCall,
    *,
    action: str,
    kind: str,
    recipients: list[str],
    group: str = "",
    teams: Sequence[str] = (),
    no_approver: str = "",
) -> AuditEvent:
    """``teams``: those the call needs every approver in (the recipients were chosen among
    their members); ``no_approver``: why none of the recipients could approve it, or too few
    people to make its quorum (a key of ``recipients.NO_APPROVER``), the mail said so."""
    data: dict[str, Any] = {"kind": kind, "recipients": recipients}
    if group:
        data["group"] = group
    if teams:
        data["teams"] = list(teams)
    if no_approver:
        data["no_approver"] = no_approver
    return record(action=action, outcome="sent", call=call, data=data, people=["recipients"])


def reviewers_notified(
    call: ToolCall, *, recipients: list[str], teams: Sequence[str] = (), no_approver: str = ""
) -> AuditEvent:
    """The tool's reviewers who could approve the call were told by e-mail that a new call
    waits for them (or, when none could, those who may reject it, told so)."""
    return _notification_sent(
        call,
        action="call.reviewers_notified",
        kind="new_call",
        recipients=recipients,
        teams=teams,
        no_approver=no_approver,
    )


def reminder_sent(
    call: ToolCall, *, recipients: list[str], teams: Sequence[str] = (), no_approver: str = ""
) -> AuditEvent:
    """Reviewers who have not voted were reminded of a call that has waited long."""
    return _notification_sent(
        call,
        action="call.reminder_sent",
        kind="reminder",
        recipients=recipients,
        teams=teams,
        no_approver=no_approver,
    )


def escalation_sent(
    call: ToolCall,
    *,
    recipients: list[str],
    group: str,
    teams: Sequence[str] = (),
    no_approver: str = "",
) -> AuditEvent:
    """A second team was told of a call about to expire undecided."""
    return _notification_sent(
        call,
        action="call.escalation_sent",
        kind="escalation",
        recipients=recipients,
        group=group,
        teams=teams,
        no_approver=no_approver,
    )


def notification_failed(
    call: ToolCall, *, kind: str, recipients: list[str], server_down: bool
) -> AuditEvent:
    """Some of the people a notification event named got no mail: their mailbox was refused,
    or the mail server was down (the reminder and the escalation are the next chances)."""
    return record(
        action="call.notification_failed",
        outcome="server_down" if server_down else "refused",
        call=call,
        data={"kind": kind, "recipients": recipients},
        people=["recipients"],
    )


# --- Recovery: leases, reconciliation, escalation, people's resolutions -------------------


def execution_resent(call: ToolCall, *, waited_seconds: float) -> AuditEvent:
    """The re-send sweep sent an approved call again: its first message never started."""
    return record(
        action="call.execution_resent",
        outcome="approved",
        call=call,
        data={"waited_seconds": round(waited_seconds, 3), "attempts": call.attempts},
    )


def read_abandoned(call: ToolCall, *, waited_seconds: float) -> AuditEvent:
    """A read stayed ``received`` past the longest it could run: its request died first."""
    return record(
        action="call.abandoned",
        outcome=call.status,
        call=call,
        data={"waited_seconds": round(waited_seconds, 3), "error": call.error},
    )


def lease_expired(call: ToolCall, *, claim_fence: int) -> AuditEvent:
    """A worker went silent past its lease; the fence moved so its late write is refused."""
    return record(
        action="call.lease_expired",
        outcome=call.status,
        call=call,
        data={"claim_fence": claim_fence, "fence": call.fence, "attempt": call.attempts},
    )


def call_reconciled(call: ToolCall, *, finding: str, actor: Any = None) -> AuditEvent:
    """The downstream's lookup settled an unknown outcome (``finding``: found, not_found)."""
    return record(
        action="call.reconciled",
        actor=actor,
        outcome=call.status,
        call=call,
        sensitive_fields=[f"result.{f}" for f in _sensitive(call)],
        data={
            "finding": finding,
            "idempotency_key": call.execution_key,
            "result": _echoed(call, call.result)[0] if call.status == "succeeded" else None,
            "attempts": call.attempts,
            "fence": call.fence,
        },
    )


def call_rechecked(call: ToolCall, *, person: Any, finding: str, action: str) -> AuditEvent:
    """A person asked the downstream again about an unknown call, and it did not settle it
    (a found effect is ``call.reconciled`` in their name): what it said, and what followed."""
    return record(
        action="call.rechecked",
        actor=person,
        outcome=call.status,
        call=call,
        data={"finding": finding, "then": action},
    )


def call_escalated(call: ToolCall, *, reason: str, finding: str = "") -> AuditEvent:
    """A person must look at the call (unknown outcome, or a failed destructive call)."""
    return record(
        action="call.escalated",
        outcome=call.status,
        call=call,
        data={"reason": reason, "finding": finding, "attempts": call.attempts},
    )


def call_resolved(call: ToolCall, *, person: Any, previous_status: str, note: str) -> AuditEvent:
    """A person marked the real outcome of a call that needed attention."""
    return record(
        action="call.resolved",
        actor=person,
        outcome=call.status,
        call=call,
        data={
            "previous_status": previous_status,
            "note": _quoting(call, note),
            "fence": call.fence,
        },
    )


def call_rerun(
    call: ToolCall, *, previous_status: str, person: Any = None, note: str = ""
) -> AuditEvent:
    """The call goes back to ``approved`` to run again, with the same idempotency key."""
    return record(
        action="call.rerun",
        actor=person,
        outcome=call.status,
        call=call,
        data={
            "previous_status": previous_status,
            "idempotency_key": call.execution_key,
            "attempts_so_far": call.attempts,
            "confirmed_by_person": person is not None,
            "note": _quoting(call, note),
        },
    )
