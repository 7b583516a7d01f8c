"""Standing approvals: a reviewer approving one call may also allow the same agent's later
calls of the same tool, for a while or a number of uses, optionally only for arguments like
the approved ones. Each call such an approval lets through names it in the audit trail.

Limits that make it safe to offer: never for destructive tools; only where the tool's
policy would ask a single reviewer (``Screening.reviewable_by_standing_approval``); at most
``APPROVALS_STANDING_MAX_SECONDS``; revocable at once by its author or an admin, and
revoked by a stop of its agent or a rejection of the call it was given with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals import hidden, sql
from approvals.guards import Refused, conflict_with
from approvals.models import StandingApproval, ToolCall
from audit.log import record
from audit.masking import mask_fields
from tools_registry import rules
from tools_registry.permissions import can_reveal, can_review
from tools_registry.policy import Risk

MAX_USES = 10_000
MATCHES = dict(StandingApproval.Match.choices)


class StandingRefused(Refused):
    code = "standing_approval_refused"


@dataclass(frozen=True)
class Terms:
    """What a reviewer allows beyond the call in front of them."""

    seconds: int
    max_uses: int | None = None
    match: str = StandingApproval.Match.SAME
    condition: str = ""


def terms_problems(call: ToolCall, terms: Terms, reviewer: Any = None) -> list[str]:
    """Why these terms cannot be granted with an approval of ``call`` by ``reviewer``
    (empty: they can)."""
    problems = []
    if call.risk != Risk.WRITE:
        problems.append("Only write tools can be approved in advance; destructive calls never.")
    longest = settings.APPROVALS_STANDING_MAX_SECONDS
    if not 60 <= terms.seconds <= longest:
        problems.append(f"A standing approval lasts 1 minute to {longest // 3600} hours.")
    if terms.max_uses is not None and not 1 <= terms.max_uses <= MAX_USES:
        problems.append(f"Allow 1 to {MAX_USES} calls, or leave the number empty.")
    if terms.match not in MATCHES:
        problems.append("Choose which later calls it covers.")
    if terms.match == StandingApproval.Match.CONDITION:
        if not terms.condition.strip():
            problems.append("Write the condition later calls must meet.")
        else:
            problems += rules.condition_problems(terms.condition, call.tool.input_schema)
            problems += _masked_to_them(terms.condition, call.tool, reviewer)
    return problems


def _masked_to_them(condition: str, tool: Any, reviewer: Any) -> list[str]:
    """A condition on a field its author sees masked reads the masked value (``_covers``),
    so it would never cover a call: said now, rather than never approving anything."""
    paths = tool.hidden_fields
    if reviewer is None or not paths or can_reveal(reviewer, tool):
        return []
    # A hidden field, one inside it, or one holding it (``args.items`` when ``items.card``).
    overlapping = sorted(
        read
        for read in rules.arguments_read(condition)
        if hidden.covers(paths, read) or any(hidden.covers([read], path) for path in paths)
    )
    return [
        f"The condition reads args.{path}, which you see masked: it could never be met. "
        "Leave it out, or ask someone who may reveal it."
        for path in overlapping
    ]


def grant(*, call: ToolCall, reviewer: Any, terms: Terms, now: datetime) -> StandingApproval:
    """Record a standing approval that comes with ``reviewer``'s approval of ``call``
    (the caller checked that approval, in the same transaction)."""
    problems = terms_problems(call, terms, reviewer)
    if problems:
        raise StandingRefused(" ".join(problems))
    standing = StandingApproval.objects.create(
        tool=call.tool,
        agent=call.agent,
        granted_by=reviewer,
        source_call=call,
        match=terms.match,
        tool_version=call.tool_version,  # the definition its author saw
        arguments_hash=call.arguments_hash if terms.match == StandingApproval.Match.SAME else "",
        condition=terms.condition.strip()
        if terms.match == StandingApproval.Match.CONDITION
        else "",
        max_uses=terms.max_uses,
        created_at=now,
        expires_at=now + timedelta(seconds=terms.seconds),
    )
    record(
        action="standing_approval.granted",
        actor=reviewer,
        call=call,
        sensitive_fields=["condition"],
        data={
            "standing_approval": standing.pk,
            "match": standing.match,
            "condition": standing.condition,
            "max_uses": standing.max_uses,
            "expires_at": standing.expires_at.isoformat(),
        },
    )
    return standing


def may_revoke(person: Any, standing: StandingApproval) -> bool:
    return standing.granted_by_id == person.pk or person.has_perm(
        "approvals.change_standingapproval"
    )


@transaction.atomic
def revoke(*, standing_id: int, person: Any) -> StandingApproval:
    standing = (
        StandingApproval.objects.select_for_update(of=("self",))
        .select_related("tool", "agent")
        .get(pk=standing_id)
    )
    if not may_revoke(person, standing):
        raise StandingRefused("Only its author or an admin may revoke a standing approval.")
    _revoke(standing, person=person)
    return standing


def revoke_for_stop(agent: Any, reason: str, stopped_by: Any) -> list[str]:
    """Revoke every live standing approval of a stopped agent, as whoever stopped it (they
    need not be allowed to revoke one otherwise); no call ids, it cancels none.

    A stop voids what was decided for the agent before it: a call still wanted after the
    resume is a new call with its own approval, not one that a standing approval given
    before the incident lets through unseen. Registered with ``tools_registry.hooks`` after
    ``calls.cancel_for_stop``, which waits for every verdict under way on the agent's
    waiting calls: a standing approval granted with one of them has committed by then.
    """
    _revoke_live(person=stopped_by, why="agent_stopped", agent=agent)
    return []


def revoke_for_rejection(call: ToolCall, *, rejected_by: Any) -> None:
    """Revoke every live standing approval given with an approval of ``call``, which
    ``rejected_by`` is vetoing (under the call's lock, in the verdict's transaction), as
    theirs: whoever gave it, not only a rejecting reviewer's own.

    One rejection vetoes the call, and what came with the approvals it overrules goes with
    them: left live, another approver's standing approval let the very call the veto stopped
    through unseen once it was sent again and asked one reviewer (a rule on ``outside_hours``
    that asked two at night, a quorum lowered since). Granted under the same lock, each one
    has committed by the time a rejection reads them.
    """
    _revoke_live(person=rejected_by, why="call_rejected", source_call=call)


def revoke_for_correction(call: ToolCall, *, corrected_by: Any) -> None:
    """Revoke every live standing approval given with an approval of ``call``, whose
    arguments ``corrected_by`` has just corrected (under the call's lock, in the verdict's
    transaction), as theirs.

    Every approval of the call so far approved arguments the correction replaced, and stops
    counting (``edits.edit_arguments``); the standing approvals given with them go too, as a
    veto's do (``revoke_for_rejection``). The corrector's own standing approval, if they give
    one, is granted after this, with their approval of the corrected arguments.
    """
    _revoke_live(person=corrected_by, why="call_corrected", source_call=call)


def _revoke_live(*, person: Any, why: str, **filters: Any) -> None:
    """Revoke, as ``person``, every live standing approval ``filters`` select, locked in
    order of their ids (two revocations that meet lock them in the same order)."""
    for standing in (
        StandingApproval.objects.select_for_update(of=("self",))
        .select_related("tool", "agent")
        .filter(revoked_at__isnull=True, expires_at__gt=timezone.now(), **filters)
        .order_by("pk")
    ):
        _revoke(standing, person=person, why=why)


def _revoke(standing: StandingApproval, *, person: Any, why: str = "") -> None:
    """Revoke ``standing`` (locked by the caller), audited; nothing if it was already."""
    if standing.revoked_at is not None:
        return
    standing.revoked_at = timezone.now()
    standing.revoked_by = person
    standing.save(update_fields=["revoked_at", "revoked_by"])
    record(
        action="standing_approval.revoked",
        actor=person,
        tool=standing.tool,
        agent=standing.agent,
        data={
            "standing_approval": standing.pk,
            "uses": standing.uses,
            **({"reason": why} if why else {}),
        },
    )


def use(
    *,
    tool: Any,
    agent: Any,
    arguments: Any,
    arguments_hash: str,
    signals: list[str],
    user_id: str,
    user_roles: list[str],
    now: datetime,
    candidates: list[StandingApproval] | None = None,
    user_aliases: Sequence[str] = (),
) -> StandingApproval | None:
    """The standing approval that covers this call, its use counted; None if none does.
    ``user_aliases``: the other names the call's verified user goes by (its author may be
    known by one of them, ``_author_may_approve``).

    ``candidates`` are the agent's live standing approvals of the tool's current version,
    oldest first, when
    the caller read them already (intake reads them with its other statements,
    ``sql.live_standing_statement``). The count is one conditional UPDATE: concurrent calls
    each take a use or find it spent, so ``max_uses`` is exact however many arrive at once.
    """
    if candidates is None:
        # Only those given for the tool's version: one given for another definition (an
        # endpoint, a schema or a description its author did not see) covers nothing, as a
        # reviewer's approval would not (``sql.live_standing_statement`` reads the same).
        candidates = list(
            StandingApproval.objects.filter(
                tool=tool,
                agent=agent,
                tool_version=tool.version,
                revoked_at__isnull=True,
                expires_at__gt=now,
            ).order_by("created_at", "pk")
        )
    if candidates:
        # Each author's right to approve is read below, after the tool's row is held as a
        # verdict holds it: a grant taken away, or an account deactivated, in a transaction
        # under way (``grants.hold_reviews_of``) is then read as done. Read before, it was
        # read as still there, and the call approved after its author could no longer.
        sql.hold_tool(tool.pk)
        # The hold may have waited for such a change: one that expired meanwhile covers
        # nothing.
        now = max(now, timezone.now())
    for standing in candidates:
        if not _covers(
            standing, tool, arguments, arguments_hash, signals, user_id, user_roles, agent
        ) or not _author_may_approve(
            standing, tool=tool, agent=agent, user_id=user_id, user_aliases=user_aliases
        ):
            continue
        uses = sql.take_standing_use(standing.pk, now)
        if uses is not None:
            # As counted, for the trail: the count read with the candidates may be behind,
            # by the uses of calls that committed since.
            standing.uses = uses
            return standing
    return None


def _author_may_approve(
    standing: StandingApproval,
    *,
    tool: Any,
    agent: Any,
    user_id: str,
    user_aliases: Sequence[str] = (),
) -> bool:
    """A standing approval stands for its author's own vote: it covers a call only if they
    could approve it themselves now. Not once their grant of the tool is taken away or their
    account deactivated, and never a call made for them (by any name the call knows them by)
    or by their own agent."""
    author = standing.granted_by
    if conflict_with(agent=agent, on_behalf_of=user_id, aliases=user_aliases, person=author):
        return False
    return can_review(author, tool)


def _covers(
    standing: StandingApproval,
    tool: Any,
    arguments: Any,
    arguments_hash: str,
    signals: list[str],
    user_id: str,
    user_roles: list[str],
    agent: Any,
) -> bool:
    if standing.match == StandingApproval.Match.ANY:
        return True
    if standing.match == StandingApproval.Match.SAME:
        return standing.arguments_hash == arguments_hash
    condition = rules.Rule(when=standing.condition, then=rules.APPROVE)
    if tool.hidden_fields and not can_reveal(standing.granted_by, tool):
        # Its author sees the hidden fields masked: the condition reads them so too. On the
        # real values, which later calls it approved would tell its author a masked value
        # one guess at a time (``args.card.startsWith("41")``), as the what-if page would.
        arguments = mask_fields(arguments, tool.hidden_fields)
    applied = rules.first_match(
        [condition],
        arguments=arguments,
        input_schema=tool.input_schema,
        signals=signals,
        user_id=user_id,
        roles=user_roles,
        agent=agent.name,
    )
    return applied.rule is not None
