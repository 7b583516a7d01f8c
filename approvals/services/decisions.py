"""Reviewers' verdicts: quorum, veto, separation of duties, a required team, binding to what
was shown, corrections, standing approvals, and for risky calls a typed confirmation and a
recent sign-in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from approvals import before_after, events, hidden, sql
from approvals.execution import send
from approvals.guards import (
    CONFLICTS,
    Refused,
    approvals_that_stand,
    approvers_if_outside,
    arguments_hash,
    cannot_run_reason,
    conflict_of_interest,
    definition_changed,
    is_shown,
)
from approvals.models import Decision, StandingApproval, Status, ToolCall, Verdict
from approvals.services import edits, standing
from approvals.services.calls import expire_call
from approvals.transitions import lock_call, move
from audit.display import escape_hidden
from audit.masking import mask_text, mask_value
from tools_registry import facts as tool_facts
from tools_registry import sources
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


class StateChanged(DecisionRefused):
    code = "state_changed"


class CorrectionRefused(DecisionRefused):
    """The corrected arguments cannot stand; the reviewer's page points at the correction."""

    code = "correction_refused"


class StandingTermsRefused(DecisionRefused):
    """The standing approval asked with the verdict cannot be granted as asked."""

    code = "standing_terms_refused"


class TeamRequired(DecisionRefused):
    code = "team_required"


@dataclass(frozen=True)
class DecisionResult:
    call: ToolCall
    decision: Decision
    approvals: int
    decided: bool  # the call left ``pending`` because of this verdict
    standing: StandingApproval | None = None


def decide(
    *,
    call_id: UUID,
    reviewer: Any,
    verdict: str,
    comment: str = "",
    shown_arguments_hash: str | None = None,
    shown_state_hash: str | None = None,
    confirmation: str | None = None,
    authenticated_at: datetime | None = None,
    edited_arguments: Any = None,
    standing_terms: standing.Terms | None = None,
) -> DecisionResult:
    """Record one reviewer's verdict. N distinct approvals approve; one rejection vetoes.

    The verdict binds to what the reviewer was shown: the arguments' hash and, when the tool
    shows the state its call would change, that state's hash (read again here: a record
    that changed while they read refuses the verdict, and so does an empty
    ``shown_state_hash``: no state seen; ``None``, for callers without a page, binds to
    none). Approving a destructive call, or one whose policy rule asks for it, needs
    ``confirmation``: the call's target or amount as ``confirmation_phrase`` gives it. A
    destructive approval also needs ``authenticated_at`` (when the reviewer last proved
    their password) within ``APPROVALS_REAUTH_WINDOW_SECONDS``. Rejecting never needs
    either: stopping harm stays easy. ``edited_arguments`` corrects the call as part of
    approving it (``services.edits``); ``standing_terms`` also allows later calls like it
    (``services.standing``).

    The row lock makes concurrent verdicts on one call queue up, so exactly one of them
    moves the call out of ``pending`` and the executor is sent the call once.
    """
    # An overdue call expires in a transaction of its own first, so that the refusal that
    # follows cannot roll the expiry back.
    expire_call(call_id=call_id)
    # The state is read before the row is locked: it may ask a downstream system.
    shown = _state_for(call_id, edited_arguments if verdict == Verdict.APPROVE else None)
    return _decide_locked(
        call_id=call_id,
        reviewer=reviewer,
        verdict=verdict,
        comment=comment,
        shown_arguments_hash=shown_arguments_hash,
        shown_state_hash=shown_state_hash,
        shown=shown,
        confirmation=confirmation,
        authenticated_at=authenticated_at,
        edited_arguments=edited_arguments,
        standing_terms=standing_terms,
    )


def _state_for(call_id: UUID, edited_arguments: Any) -> before_after.Shown:
    call = ToolCall.objects.select_related("tool__upstream").filter(pk=call_id).first()
    if call is None or call.status != Status.PENDING:
        return before_after.NOTHING
    return before_after.current_state(call)


@transaction.atomic
def _decide_locked(
    *,
    call_id: UUID,
    reviewer: Any,
    verdict: str,
    comment: str,
    shown_arguments_hash: str | None,
    shown_state_hash: str | None,
    shown: before_after.Shown,
    confirmation: str | None,
    authenticated_at: datetime | None,
    edited_arguments: Any,
    standing_terms: standing.Terms | None,
) -> DecisionResult:
    # The tool's row first (``sql.hold_tool_for``): a grant taken away while this verdict
    # is under way waits for it, instead of committing between the checks below and this
    # commit (an approval then recorded after its reviewer lost the grant, and counted).
    sql.hold_tool_for(call_id)
    # The account as stored now, not as the request read it before that wait: deactivated
    # (or no longer a superuser) meanwhile, the person may not decide; such a change locks
    # the tool's row first (``grants.hold_reviews_of``), so it is read here once committed.
    try:
        reviewer.refresh_from_db(fields=["is_active", "is_superuser"])
    except type(reviewer).DoesNotExist:  # deleted meanwhile (its deletion waited for no one)
        raise PermissionDenied("Your account no longer exists.") from None
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
    if verdict == Verdict.APPROVE:
        _require_binding(call, shown_arguments_hash)
        if (
            shown_state_hash is not None
            and shown.hash
            and not is_shown(shown_state_hash, shown.hash)
        ):
            raise StateChanged(
                "What this call would change has changed since you opened it; review it again.",
                call=call,
            )
    else:
        # A rejection runs nothing: a new tool version or a changed record does not stop
        # it (stopping harm stays easy); the stored arguments must still be the agent's.
        _require_untampered(call)
    _require_first_vote(call, reviewer, verdict)
    edited = False
    before = call.arguments
    if verdict == Verdict.APPROVE:
        _require_may_approve(call, reviewer)
        if edited_arguments is not None:
            try:
                edited = edits.edit_arguments(call, reviewer=reviewer, arguments=edited_arguments)
            except edits.EditRefused as refusal:
                raise CorrectionRefused(refusal.message, call=call) from None
        if edited:
            # The corrected call is screened anew: its rule may ask for a team, and the
            # reviewer may have approved these very arguments before another's correction.
            # What this raises rolls the correction back with everything else.
            _require_first_vote(call, reviewer, verdict)
            _require_may_approve(call, reviewer)
            # The correction overrules the approvals of the arguments it replaced, and what
            # came with them: left live, a standing approval of the very arguments this
            # reviewer found wrong would approve them, unseen, when the agent sent them again.
            standing.revoke_for_correction(call, corrected_by=reviewer)
        if call.risk == Risk.DESTRUCTIVE or (call.policy or {}).get("confirm"):
            _require_confirmation(call, confirmation)
        if call.risk == Risk.DESTRUCTIVE:
            _require_recent_sign_in(call, authenticated_at, now=now)
    elif edited_arguments is not None and edited_arguments != call.arguments:
        raise DecisionRefused("A correction comes with an approval, not a rejection.", call=call)

    comment = comment.strip()
    if edited:
        # The comment may quote a hidden value it replaced, as the notes before it may.
        comment = hidden.quoted(comment, call.tool, before)
    decision = Decision.objects.create(
        call=call,
        reviewer=reviewer,
        verdict=verdict,
        comment=comment,
        arguments_hash=call.arguments_hash,
        policy_version=(call.policy or {}).get("version", call.tool.policy_version),
        edited=edited,
        # The state shown with a correction was of the original arguments: none is bound.
        shown_state=mask_value(shown.state) if shown.state is not None and not edited else None,
        shown_state_hash=shown.hash if not edited else "",
        created_at=now,
    )
    approvals = approvals_that_stand(call, call.decisions.select_related("reviewer"))
    approving = verdict == Verdict.APPROVE
    confirmed = approving and (call.risk == Risk.DESTRUCTIVE or (call.policy or {}).get("confirm"))
    events.decision_recorded(
        call,
        decision,
        approvals=approvals,
        # What the reviewer typed, and (destructive calls) the sign-in the approval relied on.
        confirmation=(confirmation or "").strip() if confirmed else "",
        authenticated_at=authenticated_at if approving and call.risk == Risk.DESTRUCTIVE else None,
    )

    granted = None
    if verdict == Verdict.APPROVE and standing_terms is not None:
        try:
            granted = standing.grant(call=call, reviewer=reviewer, terms=standing_terms, now=now)
        except standing.StandingRefused as refusal:
            raise StandingTermsRefused(refusal.message, call=call) from None

    decided = False
    if verdict == Verdict.REJECT:
        # The veto overrules every approval of this call, and what came with them: a
        # standing approval given with one (this reviewer's, or another's) would approve
        # the next call like it, this very call sent again among them.
        standing.revoke_for_rejection(call, rejected_by=reviewer)
        move(call, Status.REJECTED, decided_at=now)
        events.call_rejected(call, decision)
        decided = True
    elif approvals >= call.approvals_required:
        send.approve(call, decided_at=now)
        events.call_approved(call, approvals=approvals)
        decided = True
    return DecisionResult(
        call=call, decision=decision, approvals=approvals, decided=decided, standing=granted
    )


@transaction.atomic
def complete_quorum(*, call_id: UUID, now: datetime) -> bool:
    """Approve a waiting call whose approvals that stand make its quorum now, without
    another verdict: one whose reviewer had lost the right to approve when the last approval
    came (so it did not count then) and has it again (a grant given back, an account
    reactivated). Every approval was given to these arguments of this tool version, each
    checked when given; only their reviewers are checked again here. True if it approved."""
    # The tool's row first, as a verdict holds it (``_decide_locked``): a grant taken away
    # while this counts the approvals waits for it, instead of committing between the count
    # and this approval (a call approved on the say-so of someone who had lost the grant).
    # Without waiting: a change of the tool under way leaves the call to the next pass.
    # Both in one round trip, with the tool's allowlist entry: each trip to the database
    # cost a candidate the sweep cannot approve more than all the database's work for it.
    call = lock_call(call_id, skip_locked=True, hold_tool=True)
    if call is None or call.status != Status.PENDING or call.approvals_required < 1:
        return False
    # The time now, under the lock: the sweep's ``now`` was read before a batch of calls,
    # and a call that expired while the batch went by must not be approved (nor dated
    # before its expiry). A later ``now`` (a sweep run as if later) stands.
    now = max(now, timezone.now())
    if (call.expires_at and call.expires_at <= now) or cannot_run_reason(call):
        return False
    if definition_changed(call):
        return False
    approvals = approvals_that_stand(call, call.decisions.select_related("reviewer"))
    if approvals < call.approvals_required:
        return False
    send.approve(call, decided_at=now)
    events.call_approved(call, approvals=approvals)
    return True


def confirmation_phrase(call: ToolCall) -> str:
    """What a reviewer types to approve a destructive call, or one whose rule asks: the
    call's target (the customer id) or amount with currency, as the tool declares, so the
    reviewer has to read them; the tool's name when the call has neither, or when they are
    masked from reviewers (a secret or sensitive field, or what the detectors mask), or hold
    a character a reader cannot see or that reorders text (shown written out everywhere
    else, typed it could not be; printed, "cus_<U+202E>3000" reads as another id)."""
    where = sources.facts_of(call.tool)
    read = tool_facts.read(where, call.arguments)
    phrase = read.confirmation_phrase(where)
    made_from = [where.target] if phrase == read.target else [where.amount, where.currency]
    paths = call.tool.hidden_fields
    if (
        not phrase
        or mask_text(phrase) != phrase
        or escape_hidden(phrase) != phrase
        or any(hidden.covers(paths, path) for path in made_from)
    ):
        return call.tool.name
    return phrase


def _require_first_vote(call: ToolCall, reviewer: Any, verdict: str) -> None:
    """One approval per reviewer for these arguments. A reviewer who approved may still
    reject while the call waits for the others (they saw something since): a rejection
    only stops harm, and both verdicts stay on record."""
    if call.decisions.filter(
        reviewer=reviewer, arguments_hash=call.arguments_hash, verdict=verdict
    ).exists():
        raise AlreadyVoted("You already decided on these arguments.", call=call)


def _require_may_approve(call: ToolCall, reviewer: Any) -> None:
    _require_separation_of_duties(call, reviewer)
    _require_team(call, reviewer)
    if reason := cannot_run_reason(call):
        raise CannotRun(f"{reason} Reject it instead.", call=call)


def _require_untampered(call: ToolCall) -> None:
    current = arguments_hash(
        tool_name=call.tool.name, tool_version=call.tool_version, arguments=call.arguments
    )
    if current != call.arguments_hash:
        raise ArgumentsChanged("The call's arguments do not match what was submitted.", call=call)


def _require_binding(call: ToolCall, shown_arguments_hash: str | None) -> None:
    """The approval is for exactly what the reviewer saw, under the current tool definition."""
    if shown_arguments_hash is not None and not is_shown(shown_arguments_hash, call.arguments_hash):
        raise ArgumentsChanged("The call changed since you opened it; review it again.", call=call)
    if definition_changed(call):
        raise ArgumentsChanged(
            "The tool's definition changed since the agent made this call; it cannot be approved.",
            call=call,
        )
    _require_untampered(call)


def _require_separation_of_duties(call: ToolCall, reviewer: Any) -> None:
    if conflict := conflict_of_interest(call, reviewer):
        raise SeparationOfDuties(f"{CONFLICTS[conflict]} You cannot approve it.", call=call)


def _require_team(call: ToolCall, reviewer: Any) -> None:
    if who := approvers_if_outside(call, reviewer):
        raise TeamRequired(
            f"This call needs its approvals from {who}; you may reject it.", call=call
        )


def _require_confirmation(call: ToolCall, confirmation: str | None) -> None:
    phrase = confirmation_phrase(call)
    if (confirmation or "").strip() != phrase:
        raise ConfirmationRequired(f"Type {phrase} to confirm this call.", call=call)


def _require_recent_sign_in(
    call: ToolCall, authenticated_at: datetime | None, *, now: datetime
) -> None:
    """A destructive approval is made by someone who just proved who they are."""
    window = timedelta(seconds=settings.APPROVALS_REAUTH_WINDOW_SECONDS)
    if authenticated_at is None or not (now - window <= authenticated_at <= now + CLOCK_SKEW):
        minutes = max(1, settings.APPROVALS_REAUTH_WINDOW_SECONDS // 60)
        raise ReauthenticationRequired(
            f"Approving a destructive call needs a sign-in from the last {minutes} minutes; "
            "enter your password again.",
            call=call,
        )
