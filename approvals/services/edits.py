"""A reviewer's correction of a pending call's arguments, made as part of approving it.

The corrected arguments are checked against the tool's schema and screened again (signals,
policy rules) like a new call; the call's arguments and bound hash change, approvals of the
earlier arguments stop counting (they approved something else), and the originals stay in
the audit trail. Destructive calls may be corrected only to narrow what they do, and only
where ``APPROVALS_DESTRUCTIVE_EDITS`` is ``narrow``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.conf import settings

from approvals import events, hidden, screening
from approvals.guards import Refused, arguments_hash, counted_approvals
from approvals.models import Decision, Note, Status, ToolCall, Verdict
from audit.canonical import canonical_json
from audit.display import partial
from audit.masking import is_masked, mask_text
from core.json_values import as_stored
from tools_registry.policy import Risk
from tools_registry.schemas import validate_arguments


class EditRefused(Refused):
    code = "edit_refused"


def edit_arguments(call: ToolCall, *, reviewer: Any, arguments: Any) -> bool:
    """Replace the arguments of ``call`` (held locked, pending); whether anything changed."""
    # As the database will keep them: their hash must match the stored call's (as_stored).
    arguments = as_stored(arguments)
    if arguments == call.arguments:
        return False
    if not isinstance(arguments, dict):
        raise EditRefused("The corrected arguments must be a JSON object.")
    if call.risk == Risk.DESTRUCTIVE:
        if settings.APPROVALS_DESTRUCTIVE_EDITS != "narrow":
            raise EditRefused("Destructive calls cannot be corrected; reject this one instead.")
        if not narrows(call.arguments, arguments):
            raise EditRefused(
                "A destructive call may only be narrowed: remove items or lower amounts, "
                "never add or change what it acts on."
            )
    problems = validate_arguments(
        call.tool.input_schema, arguments, sensitive_fields=call.tool.hidden_fields
    )
    if problems:
        # The problems quote no value at or around a hidden field (``sensitive_fields``), and
        # a value the reviewer left masked is restored only at its own place; a restored
        # address or key another field holds is masked as the reviewer saw it. Nothing else
        # is masked here: what the reviewer typed, masked only where it equals a hidden value
        # or with a keyed fingerprint, would let them test guesses of one, unaudited.
        raise EditRefused(
            "The corrected arguments do not fit the tool: "
            + mask_text(problems.summary(), render=_unkeyed)
        )
    try:
        screened = screening.screen(
            agent=call.agent,
            tool=call.tool,
            arguments=arguments,
            reasoning=call.reasoning,
            user_id=call.on_behalf_of,
            user_roles=list(call.end_user_roles or []),
            # The corrected call is the one that arrived then: a correction made in working
            # hours does not take away the ``outside_hours`` of a call that came at night.
            at=call.created_at,
        )
    except screening.RefusedByRule as refusal:
        raise EditRefused(f"The corrected call would be refused: {refusal.message}") from None
    before, before_hash = call.arguments, call.arguments_hash
    after_hash = arguments_hash(
        tool_name=call.tool.name, tool_version=call.tool_version, arguments=arguments
    )
    # Approvals bind to the arguments' hash: a correction back to arguments another reviewer
    # approved before a correction replaced them would count that approval again, unseen by
    # its reviewer since (the correction that reset it, say, found an amount wrong), and
    # with this one make a quorum of two. (The editor's own approval of them: ``AlreadyVoted``.)
    if (
        call.decisions.filter(verdict=Verdict.APPROVE, arguments_hash=after_hash)
        .exclude(reviewer=reviewer)
        .exists()
    ):
        raise EditRefused(
            "These are the arguments as they were before a correction: approvals given to "
            "them then would count again, unseen by their reviewers since. Correct them "
            "otherwise, or reject the call."
        )
    reset = counted_approvals(call.decisions.all(), before_hash)
    money = screened.facts.money
    fields = {
        "arguments": arguments,
        "arguments_hash": after_hash,
        "arguments_edited": True,
        # A rule that would approve the corrected call needs no more than the editor's own
        # approval; otherwise the corrected call needs what its own rule asks.
        "approvals_required": max(1, screened.approvals_required),
        "policy": screened.policy(call.tool),
        "signals": [f.as_dict() for f in screened.signals],
        "amount_minor": money.minor if money else None,
        "currency": money.currency if money else "",
    }
    # The reasoning may quote a hidden value the correction replaced: once replaced, nothing
    # would know to mask it where the reasoning is shown (only the agent wrote it, and no
    # answer to the agent carries it back).
    if (reasoning := hidden.quoted(call.reasoning, call.tool, before)) != call.reasoning:
        fields["reasoning"] = reasoning
    # The caller holds the row lock, and the status is not touched: a plain update.
    ToolCall.objects.filter(pk=call.pk, status=Status.PENDING).update(**fields)
    # So may what reviewers wrote: one who revealed the value may have quoted it.
    _mask_replaced_quotes(call, before)
    for name, value in fields.items():
        setattr(call, name, value)
    events.arguments_edited(
        call, reviewer=reviewer, before=before, before_hash=before_hash, reset=reset
    )
    return True


def _mask_replaced_quotes(call: ToolCall, before: Any) -> None:
    """Mask, in the call's notes and verdicts' comments as stored, the values of its hidden
    fields in ``before`` (its arguments until a correction). Shown and recorded, they are
    masked by the call's arguments of the moment, which no longer hold a replaced value."""
    secrets = hidden.values(call.tool, before)
    if not secrets:
        return
    for note in Note.objects.filter(call=call).only("text"):
        if (text := hidden.text(note.text, secrets)) != note.text:
            Note.objects.filter(pk=note.pk).update(text=text)
    for decision in Decision.objects.filter(call=call).exclude(comment="").only("comment"):
        if (comment := hidden.text(decision.comment, secrets)) != decision.comment:
            Decision.objects.filter(pk=decision.pk).update(comment=comment)


def _unkeyed(kind: str, value: str) -> str:
    """A detected value in a refusal: in its display form, a fingerprint left out."""
    shown = partial(kind, value)
    return f"[masked:{kind}]" if is_masked(shown) else shown


def narrows(before: Any, after: Any) -> bool:
    """Whether ``after`` does no more than ``before``: the same values, with list items left
    out, and numbers no larger in size. Never an argument left out: what the tool does
    without it is its default, which may do more (a ``dry_run`` or a ``soft`` flag dropped)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return before.keys() == after.keys() and all(narrows(before[k], after[k]) for k in after)
    if isinstance(before, list) and isinstance(after, list):
        # Counted, not searched item by item: an agent's list may be long.
        remaining = Counter(canonical_json(item) for item in before)
        for item in after:
            key = canonical_json(item)
            if not remaining[key]:
                return False
            remaining[key] -= 1
        return True
    numbers = (int, float)
    if (
        isinstance(before, numbers)
        and isinstance(after, numbers)
        and not isinstance(before, bool)
        and not isinstance(after, bool)
    ):
        return abs(after) <= abs(before) and (after >= 0) == (before >= 0)
    # As JSON, not as Python compares them: true is not 1, nor false 0 (a tool may tell
    # them apart: ``soft: true`` is not ``soft: 1`` to a strict check).
    return canonical_json(before) == canonical_json(after)
