"""Reviewers' verdicts: quorum, veto, separation of duties, binding to what was shown,
and for destructive calls a typed confirmation and a recent sign-in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals import events
from approvals.execution import send
from approvals.guards import (
    CONFLICTS,
    Refused,
    arguments_hash,
    cannot_run_reason,
    conflict_of_interest,
)
from approvals.models import Decision, Status, ToolCall, Verdict
from approvals.services.calls import expire_call
from approvals.transitions import lock_call, move
from tools_registry.permissions import require_reviewer
from tools_registry.policy import Risk

# A sign-in stamped this far in the future is not believed (clock skew between web nodes).
CLOCK_SKEW = timedelta(seconds=60)


class DecisionRefused(Refused):
    """A verdict that cannot be recorded, on ``call`` as it now stands."""

    code = "decision_refused"

    def __init__(self, message: str, *, call: ToolCall | None = None):
        super().__init__(message)
        self.call = call


class NotPending(DecisionRefused):
    code = "not_pending"


class SeparationOfDuties(DecisionRefused):
    code = "separation_of_duties"


class CannotRun(DecisionRefused):
    code = "cannot_run"


class AlreadyVoted(DecisionRefused):
    code = "already_voted"


class ArgumentsChanged(DecisionRefused):
    code = "arguments_changed"


class CommentRequired(DecisionRefused):
    code = "comment_required"


class ConfirmationRequired(DecisionRefused):
    code = "confirmation_required"


class ReauthenticationRequired(DecisionRefused):
    code = "reauthentication_required"


@dataclass(frozen=True)
class DecisionResult:
    call: ToolCall
    decision: Decision
    approvals: int
    decided: bool  # the call left ``pending`` because of this verdict


def decide(
    *,
    call_id: UUID,
    reviewer: Any,
    verdict: str,
    comment: str = "",
    shown_arguments_hash: str | None = None,
    confirmation: str | None = None,
    authenticated_at: datetime | None = None,
) -> DecisionResult:
    """Record one reviewer's verdict. N distinct approvals approve; one rejection vetoes.

    Approving a destructive call also needs ``confirmation`` equal to the tool's name and
    ``authenticated_at`` (when the reviewer last proved their password) within
    ``APPROVALS_REAUTH_WINDOW_SECONDS``; rejecting never does, stopping harm stays easy.

    The row lock makes concurrent verdicts on one call queue up, so exactly one of them
    moves the call out of ``pending`` and the executor is sent the call once.
    """
    # An overdue call expires in a transaction of its own first, so that the refusal that
    # follows cannot roll the expiry back.
    expire_call(call_id=call_id)
    return _decide_locked(
        call_id=call_id,
        reviewer=reviewer,
        verdict=verdict,
        comment=comment,
        shown_arguments_hash=shown_arguments_hash,
        confirmation=confirmation,
        authenticated_at=authenticated_at,
    )


@transaction.atomic
def _decide_locked(
    *,
    call_id: UUID,
    reviewer: Any,
    verdict: str,
    comment: str,
    shown_arguments_hash: str | None,
    confirmation: str | None,
    authenticated_at: datetime | None,
) -> DecisionResult:
    call = lock_call(call_id)
    if call is None:
        raise ToolCall.DoesNotExist
    require_reviewer(reviewer, call.tool)
    if verdict not in Verdict.values:
        raise DecisionRefused(f"Unknown verdict {verdict!r}.", call=call)
    now = timezone.now()
    if call.status == Status.EXPIRED:
        raise NotPending("This call expired before the decision was made.", call=call)
    if call.status == Status.PENDING and call.expires_at and call.expires_at <= now:
        # It expired in the instant since expire_call looked; the sweep will record that.
        raise NotPending("This call expired before the decision was made.", call=call)
    if call.status != Status.PENDING:
        raise NotPending(f"This call is already {call.get_status_display().lower()}.", call=call)
    if verdict == Verdict.REJECT and not comment.strip():
        raise CommentRequired("Say why you reject the call; the agent reads it.", call=call)
    _require_binding(call, shown_arguments_hash)
    if verdict == Verdict.APPROVE:
        _require_separation_of_duties(call, reviewer)
        if reason := cannot_run_reason(call):
            raise CannotRun(f"{reason} Reject it instead.", call=call)
    if call.decisions.filter(reviewer=reviewer).exists():
        raise AlreadyVoted("You already decided on this call.", call=call)
    if verdict == Verdict.APPROVE and call.risk == Risk.DESTRUCTIVE:
        _require_destructive_confirmation(call, confirmation, authenticated_at, now=now)

    decision = Decision.objects.create(
        call=call,
        reviewer=reviewer,
        verdict=verdict,
        comment=comment.strip(),
        arguments_hash=call.arguments_hash,
        policy_version=call.tool.policy_version,
        created_at=now,
    )
    approvals = call.decisions.filter(verdict=Verdict.APPROVE).count()
    destructive_approval = verdict == Verdict.APPROVE and call.risk == Risk.DESTRUCTIVE
    events.decision_recorded(
        call,
        decision,
        approvals=approvals,
        confirmation=(confirmation or "").strip() if destructive_approval else "",
        authenticated_at=authenticated_at if destructive_approval else None,
    )

    decided = False
    if verdict == Verdict.REJECT:
        move(call, Status.REJECTED, decided_at=now)
        events.call_rejected(call, decision)
        decided = True
    elif approvals >= call.approvals_required:
        send.approve(call, decided_at=now)
        events.call_approved(call, approvals=approvals)
        decided = True
    return DecisionResult(call=call, decision=decision, approvals=approvals, decided=decided)


def _require_binding(call: ToolCall, shown_arguments_hash: str | None) -> None:
    """The approval is for exactly what the reviewer saw, under the current tool definition."""
    if shown_arguments_hash is not None and shown_arguments_hash != call.arguments_hash:
        raise ArgumentsChanged("The call changed since you opened it; review it again.", call=call)
    if call.tool.version != call.tool_version:
        raise ArgumentsChanged(
            "The tool's definition changed since the agent made this call; it cannot be approved.",
            call=call,
        )
    current = arguments_hash(
        tool_name=call.tool.name, tool_version=call.tool_version, arguments=call.arguments
    )
    if current != call.arguments_hash:
        raise ArgumentsChanged("The call's arguments do not match what was submitted.", call=call)


def _require_separation_of_duties(call: ToolCall, reviewer: Any) -> None:
    if conflict := conflict_of_interest(call, reviewer):
        raise SeparationOfDuties(f"{CONFLICTS[conflict]} You cannot approve it.", call=call)


def _require_destructive_confirmation(
    call: ToolCall, confirmation: str | None, authenticated_at: datetime | None, *, now: datetime
) -> None:
    """A destructive approval is typed out by someone who just proved who they are."""
    if (confirmation or "").strip() != call.tool.name:
        raise ConfirmationRequired(
            f"Type the tool's name, {call.tool.name}, to confirm this destructive call.",
            call=call,
        )
    window = timedelta(seconds=settings.APPROVALS_REAUTH_WINDOW_SECONDS)
    if authenticated_at is None or not (now - window <= authenticated_at <= now + CLOCK_SKEW):
        minutes = max(1, settings.APPROVALS_REAUTH_WINDOW_SECONDS // 60)
        raise ReauthenticationRequired(
            f"Approving a destructive call needs a sign-in from the last {minutes} minutes; "
            "enter your password again.",
            call=call,
        )
