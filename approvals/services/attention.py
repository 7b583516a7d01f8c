"""What a person does with a call that needs attention: an ``unknown`` outcome the
downstream could not settle, or a failed destructive call.

They may mark the real outcome (after checking the downstream system themselves), ask the
downstream again, or re-run the call with its original idempotency key after an explicit
confirmation. Each is audited with the person as the actor. Only people who may review the
tool may act, and not the agent's owner nor the person the agent acts for; when the call's
policy asks its approvals from teams, only their members (whoever may approve it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from approvals import events, transitions
from approvals.execution import send
from approvals.guards import (
    CONFLICTS,
    Refused,
    approvers_if_outside_on,
    attention,
    cannot_run_reason,
    conflict_of_interest,
)
from approvals.models import Status, ToolCall
from approvals.services.recovery import Reconciliation, reconcile_call
from approvals.transitions import lock_call, move
from tools_registry.permissions import require_reviewer


class AttentionRefused(Refused):
    """An action on a call that needs attention that cannot be done."""

    code = "attention_refused"


class NoLongerNeedsAttention(AttentionRefused):
    code = "no_longer_needs_attention"


class NoteRequired(AttentionRefused):
    code = "note_required"


class RerunConfirmationRequired(AttentionRefused):
    code = "confirmation_required"


class OutcomeNotAllowed(AttentionRefused):
    code = "outcome_not_allowed"


class ConflictOfInterest(AttentionRefused):
    code = "separation_of_duties"


class TeamRequired(AttentionRefused):
    code = "team_required"


class CallRanAgain(AttentionRefused):
    code = "call_ran_again"


def needs_a_person(call: ToolCall) -> bool:
    return call.status == Status.UNKNOWN or (call.status == Status.FAILED and call.needs_attention)


@transaction.atomic
def resolve_call(
    *, call_id: UUID, person: Any, outcome: str, note: str, shown_fence: int | None = None
) -> ToolCall:
    """Mark the real outcome a person established: ``succeeded`` or ``failed``.

    An unknown call may be marked either way. A failed destructive call can only be
    acknowledged as failed: its handler reported that the effect did not happen.
    ``shown_fence``: the call's fence on the page the person acted on (see ``_locked_for``).
    """
    call = _locked_for(call_id, person, shown_fence)
    note = note.strip()
    if not note:
        raise NoteRequired("Say how you established the outcome; the audit trail keeps it.")
    previous = call.status
    # What every settled outcome records: when, and that nobody needs to look any more.
    settled: dict[str, Any] = {"finished_at": timezone.now(), **attention()}
    if outcome == Status.SUCCEEDED:
        if call.status != Status.UNKNOWN:
            raise OutcomeNotAllowed(
                "The handler reported that this call's effect did not happen, so it cannot be "
                "marked succeeded. Re-run it instead."
            )
        move(
            call,
            Status.SUCCEEDED,
            result={"resolution": "marked succeeded by a reviewer", "note": note},
            error=None,
            **settled,
        )
    elif outcome == Status.FAILED:
        if call.status == Status.UNKNOWN:
            move(call, Status.FAILED, error={"code": "marked_failed", "message": note}, **settled)
        else:  # a failed destructive call: acknowledged, it stays failed
            off = attention()
            for name, value in off.items():
                setattr(call, name, value)
            call.save(update_fields=[*off, "updated_at"])
    else:
        raise OutcomeNotAllowed(f"Unknown outcome {outcome!r}.")
    events.call_resolved(call, person=person, previous_status=previous, note=note)
    return call


@transaction.atomic
def rerun_call(
    *,
    call_id: UUID,
    person: Any,
    confirmed: bool,
    note: str = "",
    shown_fence: int | None = None,
) -> ToolCall:
    """Run the call again with its original idempotency key, once a person confirmed it.

    The executor gets the call after commit; the claim, fence and lease apply as for the
    first run, so a late worker of an earlier attempt still cannot write.
    """
    call = _locked_for(call_id, person, shown_fence)
    if not confirmed:
        raise RerunConfirmationRequired(
            "Confirm the re-run: if the first attempt did happen and the downstream does not "
            "refuse repeats of the key, the effect happens twice."
        )
    if not transitions.allowed(call.status, Status.APPROVED, risk=call.risk):
        raise AttentionRefused(
            "A destructive call runs once: record what happened. If the effect is still "
            "wanted, the agent proposes a new call, which needs its own approvals."
        )
    if reason := cannot_run_reason(call):
        raise AttentionRefused(reason)
    previous = call.status
    send.approve(call, lease_until=None, **attention())
    events.call_rerun(call, previous_status=previous, person=person, note=note.strip())
    return call


def recheck_call(*, call_id: UUID, person: Any) -> Reconciliation:
    """Ask the downstream again for an unknown call. Found: it succeeds (audited with the
    person as actor); otherwise it stays for the person to decide, never re-run by itself,
    and the asking is audited in their name (``call.rechecked``)."""
    with transaction.atomic():
        _locked_for(call_id, person)
    reconciled = reconcile_call(call_id=call_id, actor=person, allow_rerun=False)
    if reconciled.action != "succeeded":
        call = ToolCall.objects.select_related("tool", "agent").get(pk=call_id)
        events.call_rechecked(
            call, person=person, finding=reconciled.finding, action=reconciled.action
        )
    return reconciled


def _locked_for(call_id: UUID, person: Any, shown_fence: int | None = None) -> ToolCall:
    call = lock_call(call_id)
    if call is None:
        raise ToolCall.DoesNotExist
    require_reviewer(person, call.tool)
    _require_no_conflict(call, person)
    if outside := outside_required_teams(call, person):
        raise TeamRequired(outside)
    if not needs_a_person(call):
        raise NoLongerNeedsAttention(
            f"This call no longer needs attention: it is {call.get_status_display().lower()}."
        )
    if shown_fence is not None and call.fence != shown_fence:
        # What the person established was about the attempts they were shown: the call
        # ran again since (a re-run by reconciliation, say), and that attempt may have had
        # its effect. The fence moves with every claim and every lease taken away.
        raise CallRanAgain(
            f"This call ran again since it was shown to you (attempt {call.attempts} now): "
            "check the downstream again, then decide."
        )
    return call


def _require_no_conflict(call: ToolCall, person: Any) -> None:
    """Separation of duties, as for approvals: the agent's owner and the person the agent
    acts for may not settle what happened to its call, nor send it again."""
    if conflict := conflict_of_interest(call, person):
        raise ConflictOfInterest(CONFLICTS[conflict])


def outside_required_teams(call: ToolCall, person: Any) -> str:
    """Why ``person`` may not settle or re-run ``call``, whose policy asks its approvals from
    teams they are not all in; "" if they are (or it asks none). A re-run is another go at
    the effect its approvers allowed, and what happened decides whether the agent may try
    again: both are for whoever may approve it."""
    return outside_required_teams_on([call], person)[call.pk]


def outside_required_teams_on(calls: Sequence[ToolCall], person: Any) -> dict[Any, str]:
    """``outside_required_teams`` of each of ``calls``, by call id, in one query at most."""
    return {
        pk: f"This call's approvals come from {who}." if who else ""
        for pk, who in approvers_if_outside_on(calls, person).items()
    }
