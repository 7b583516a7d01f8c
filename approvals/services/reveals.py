"""Revealing a call's masked arguments to a reviewer: a reason, a permission, an audit event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db import transaction

from approvals import events
from approvals.guards import Refused
from approvals.models import ToolCall
from tools_registry.permissions import REVEAL_PERMISSION, require_reviewer

MIN_REASON_LENGTH = 8


class RevealRefused(Refused):
    """The arguments stay masked."""

    code = "reveal_refused"


@dataclass(frozen=True)
class RevealedArguments:
    call: ToolCall
    arguments: dict[str, Any]


def can_reveal(user: Any, call: ToolCall) -> bool:
    """Reviewers of the tool who also hold the reveal grant on it (guardian object permission)."""
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.has_perm(REVEAL_PERMISSION, call.tool))


@transaction.atomic
def reveal_arguments(*, call_id: UUID, reviewer: Any, reason: str) -> RevealedArguments:
    """Return the call's arguments unmasked, once, and audit who saw them and why.

    Nothing is stored that would keep them revealed: every look is its own audited request.
    The audit event names the fields that were masked, never their values.
    """
    call = ToolCall.objects.select_related("tool", "agent").get(pk=call_id)
    require_reviewer(reviewer, call.tool)
    if not can_reveal(reviewer, call):
        raise PermissionDenied(f"You may not reveal the arguments of {call.tool.name} calls.")
    reason = reason.strip()
    if len(reason) < MIN_REASON_LENGTH:
        raise RevealRefused(
            f"Say why you need to see the masked values (at least {MIN_REASON_LENGTH} characters)."
        )
    events.arguments_revealed(call, reviewer=reviewer, reason=reason)
    return RevealedArguments(call=call, arguments=call.arguments)
