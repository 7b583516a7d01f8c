"""The rules a call is checked against before it moves: what an approval binds to,
who may not approve it, and whether it may still run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.utils import timezone

from accounts.models import SsoIdentity
from approvals.models import ToolCall
from audit.canonical import canonical_json, sha256_hex
from tools_registry import role_scopes
from tools_registry.end_users import folded
from tools_registry.models import AgentToken
from tools_registry.permissions import can_review


class Refused(Exception):
    """A request on a call that cannot be done: ``code`` names why for machines and tests,
    ``message`` says it to the person or agent who asked."""

    code = "refused"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def arguments_hash(*, tool_name: str, tool_version: str, arguments: Any) -> str:
    """What an approval binds to: the exact tool, its definition, and the arguments."""
    return sha256_hex(
        canonical_json({"tool": tool_name, "version": tool_version, "arguments": arguments})
    )


def counted_approvals(decisions: Iterable[Any], bound_hash: str) -> int:
    """The approvals that count towards a call's quorum: those given to its arguments as
    they are now. After a reviewer corrects the arguments, earlier approvals approved
    something else."""
    return sum(1 for d in decisions if d.verdict == "approve" and d.arguments_hash == bound_hash)


def approvals_that_stand(call: ToolCall, decisions: Iterable[Any]) -> int:
    """``counted_approvals``, less those whose reviewer could not give them now: an approval
    is a person's say-so, and once their grant of the tool is taken away, their account
    deactivated, or they leave the team the call's rule asks for, the call waits for someone
    who may still approve it. (Rejections stand whoever gave them: stopping harm stays easy.)
    """
    return sum(
        1
        for d in decisions
        if d.verdict == "approve"
        and d.arguments_hash == call.arguments_hash
        and may_still_approve(call, d.reviewer)
    )


def approvals_now(call: ToolCall, decisions: Iterable[Any], given: int | None = None) -> int:
    """The approvals that count, as shown (the queue, the agent's answer): ``given`` (the
    ``counted_approvals``, or a count the caller made in SQL), unless the call still waits
    with that many or more, which means some of them no longer stand: only then are the
    reviewers checked (``approvals_that_stand``, queries per approval); ``decisions`` (a
    queryset, say) is read only then, or when nothing is ``given``."""
    if given is None:
        decisions = list(decisions)
        given = counted_approvals(decisions, call.arguments_hash)
    if call.status == "pending" and given >= call.approvals_required > 0:
        return approvals_that_stand(call, decisions)
    return given


def may_still_approve(call: ToolCall, person: Any) -> bool:
    """Whether ``person`` could approve ``call`` now, as far as who they are goes: they may
    review its tool, no conflict of interest keeps them from it, and they are in the team its
    rule asks for."""
    return (
        can_review(person, call.tool)
        and not conflict_of_interest(call, person)
        and in_required_team(call, person)
    )


def required_teams(policy: Mapping[str, Any] | None) -> list[str]:
    """The teams every approver of a call must belong to, each of them, from its policy
    snapshot (none: anyone granted the tool). A call stored before snapshots held a list
    names its one team as ``team``; any team named either way is required (fail closed)."""
    policy = policy or {}
    named = [*(policy.get("teams") or []), policy.get("team") or ""]
    return sorted({team for team in named if team})


def in_required_team(call: ToolCall, person: Any) -> bool:
    """Whether ``person`` is a member of every team the call's policy asks its approvals
    from, if any (several when rules that could not be evaluated asked for other teams)."""
    teams = set(required_teams(call.policy))
    return not teams or person.groups.filter(name__in=teams).count() == len(teams)


def teams_phrase(teams: Sequence[str]) -> str:
    """Who may approve, in words: "the finance team", or "members of both finance and
    security" (each approver in every one)."""
    if len(teams) == 1:
        return f"the {teams[0]} team"
    listed = ", ".join(teams[:-1]) + f" and {teams[-1]}"
    return f"members of {'both' if len(teams) == 2 else 'all of'} {listed}"


CONFLICTS = {
    "owner": "You own the agent that made this call.",
    "former_owner": "You owned the agent when it made this call.",
    "on_behalf_of": "The agent acts on your behalf in this call.",
    "token_issuer": "You issued a token the agent could use when it made this call.",
}


def conflict_of_interest(call: ToolCall, person: Any) -> str:
    """Which conflict keeps ``person`` from approving or settling ``call`` (a key of
    ``CONFLICTS``), or "" for none: separation of duties, one rule everywhere.

    The agent's owner (now, or when the call was made), the end user the agent acts for
    (``on_behalf_of``, matched to the person's username, e-mail or single sign-on ``sub``),
    and whoever issued one of the agent's tokens that was live when the call was made (they
    were shown its secret: the call may be theirs) may reject a call but never let it run.
    """
    conflict = conflict_with(
        agent=call.agent, on_behalf_of=call.on_behalf_of, person=person, made_at=call.created_at
    )
    if not conflict and call.agent_owner_id == person.pk:
        return "former_owner"  # the agent changed hands since: the call may still be theirs
    return conflict


def conflict_with(
    *, agent: Any, on_behalf_of: str, person: Any, made_at: datetime | None = None
) -> str:
    """``conflict_of_interest`` for a call of ``agent`` for ``on_behalf_of`` made at
    ``made_at``; before it is stored (a standing approval about to cover it), now."""
    if agent.owner_id == person.pk:
        return "owner"
    if acting_for := folded(on_behalf_of):
        # A verified user is named by their token's claim, by default its ``sub``: the one
        # their sign-in through the same provider is linked to, not their account's name.
        subjects = SsoIdentity.objects.filter(user_id=person.pk).values_list("subject", flat=True)
        names = {person.get_username(), person.email or "", *subjects}
        if acting_for in {folded(name) for name in names}:
            return "on_behalf_of"
    made_at = made_at or timezone.now()
    issued = AgentToken.objects.filter(
        agent_id=agent.pk, created_by_id=person.pk, created_at__lte=made_at
    ).filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=made_at))
    if issued.exists():
        return "token_issuer"
    return ""


# Why an approved call may no longer run, by error code (the code the agent gets back).
CANNOT_RUN = {
    "agent_stopped": "The agent that made this call was stopped, so the call cannot run.",
    "tool_disabled": "The tool is disabled or its code is gone, so the call cannot run.",
    "agent_disabled": "The agent that made this call is disabled, so the call cannot run.",
    "tool_version_changed": "The tool's definition changed since the agent made this call.",
    "tool_not_allowed": "The tool was taken off the agent's allowlist, so the call cannot run.",
    "user_not_allowed": "The agent's role scopes no longer let this call's user use the tool.",
}


def may_not_run_now(code: str) -> str:
    """The reason of an escalation for good: the outcome is unknown, and the call may not
    run now (``CANNOT_RUN``)."""
    return (
        f"The outcome is unknown, and the call may not run again now: {CANNOT_RUN[code]} "
        "Check the downstream, then mark the outcome."
    )


def attention_reason(reason: str) -> str:
    """``reason`` as a call keeps it (the events keep it whole)."""
    longest = ToolCall._meta.get_field("attention_reason").max_length or len(reason)
    return reason[:longest]


def attention(reason: str = "", *, for_good: bool = False) -> dict[str, Any]:
    """The fields that put a call on the "needs attention" page with ``reason`` ("" takes it
    off), and whether it is left there to a person for good (``left_to_a_person``): written
    together, as the table's check constraint asks (left to a person only while on it)."""
    return {
        "needs_attention": bool(reason),
        "attention_reason": attention_reason(reason),
        "left_to_person": for_good and bool(reason),
    }


def left_to_a_person(call: ToolCall) -> bool:
    """Whether the call was escalated for a person to decide whatever the downstream says
    next, short of the effect being found. Checked again later, such a call is settled by a
    found effect only, never re-run by itself: that it may run again (a resume) is nobody's
    decision to re-run it."""
    return call.needs_attention and call.left_to_person


def cannot_run_code(call: ToolCall) -> str:
    """Why the call may no longer run (its tool or agent was switched off, or the tool's
    definition changed since), or its agent was stopped, as a key of ``CANNOT_RUN``; ""
    when it may run."""
    if call.agent.stopped_at is not None:
        return "agent_stopped"
    if not call.tool.runnable:
        return "tool_disabled"
    if not call.agent.enabled:
        return "agent_disabled"
    if call.tool.version != call.tool_version:
        return "tool_version_changed"
    if not tool_still_allowed(call):
        return "tool_not_allowed"
    # The roles the call was made in, as they arrived: as a new call for them would be.
    made_for = role_scopes.EndUser(
        call.on_behalf_of, tuple(call.end_user_roles or ()), call.end_user_source
    )
    if not role_scopes.permits(call.agent, made_for, call.tool):
        return "user_not_allowed"
    return ""


def tool_still_allowed(call: ToolCall) -> bool:
    """Whether the call's tool is still on its agent's allowlist: read with the call by the
    claim's lock (``sql.lock_call``), asked here otherwise."""
    known = getattr(call, "tool_allowed", None)
    if known is not None:
        return bool(known)
    return call.agent.allowed_tools.filter(pk=call.tool_id).exists()


def cannot_run_reason(call: ToolCall) -> str:
    """Why the call may no longer run, in words, or ""."""
    code = cannot_run_code(call)
    return CANNOT_RUN[code] if code else ""
