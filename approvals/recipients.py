"""Who an e-mail about a pending call is for: the tool's reviewers who could approve it, and
what the mail must say when none of them can (``approvals.notifications`` sends them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from guardian.shortcuts import get_users_with_perms

from approvals import guards
from approvals.models import ToolCall
from tools_registry.models import Tool


def granted_reviewers(tool: Tool) -> list[Any]:
    """Active people granted review of ``tool``, directly or through a team (with an e-mail
    address or not: whether anyone could approve a call is asked of them all)."""
    users = get_users_with_perms(
        tool,
        only_with_perms_in=["review_tool"],
        with_group_users=True,
        with_superusers=False,
    )
    # get_users_with_perms returns a queryset when with_group_users is set, as here.
    assert not isinstance(users, list)
    return [u for u in users.order_by("username") if u.is_active]


def escalation_recipients(tool: Tool) -> list[Any]:
    if tool.escalation_group_id is None:
        return []
    return list(
        get_user_model()
        .objects.filter(groups=tool.escalation_group_id, is_active=True)
        .exclude(email="")
        .order_by("username")
    )


def without_conflicts(call: ToolCall, people: list[Any]) -> list[Any]:
    """``people`` but those separation of duties keeps from approving ``call`` (its agent's
    owner, the end user it acts for, a token's issuer): they may reject it, but a mail
    asking them to decide their own call, or reminding them of a quorum they cannot make,
    is not for them."""
    return [p for p in people if not guards.conflict_of_interest(call, p)]


# Why nobody the mails could reach may approve a call whose rule asks for teams, and what an
# admin must do about it before the call expires.
NO_APPROVER = {
    "no_member": (
        "Nobody granted review of {tool} is a member of all of the teams this call needs its "
        "approvals from ({teams}), so nobody can approve it. An admin must act before it "
        "expires: grant the tool to someone in all of them, or add one of its reviewers to them."
    ),
    "conflicted": (
        "The only reviewers of {tool} in all of the teams this call needs its approvals from "
        "({teams}) may not approve it (separation of duties), so nobody can approve it. An admin "
        "must act before it expires: grant the tool to someone else in all of them, or add one "
        "of its reviewers to them."
    ),
    "no_address": (
        "The reviewers of {tool} in all of the teams this call needs its approvals from "
        "({teams}) have no e-mail address, so they were not told of it. An admin must act "
        "before it expires: give them an address, or tell them."
    ),
}


@dataclass(frozen=True)
class Audience:
    """Whom a mail about a call asks for a decision, the teams its approvers must all be in
    ([] for any reviewer of the tool), and why nobody the mail reaches can approve it (a key
    of ``NO_APPROVER``, or "")."""

    people: list[Any]
    teams: list[str]
    no_approver: str = ""


def audience(call: ToolCall, granted: list[Any]) -> Audience:
    """Those of ``granted`` (the tool's reviewers) with an address who could approve ``call``:
    no conflict of interest keeps them from it and, when its rule asks for teams, they are
    in every one (a reviewer outside them may reject but not approve: a mail asking them for
    an approval would send them to a page that refuses it). When no such person can be
    mailed, all of those without a conflict still hear of the call, told why (``no_approver``):
    it expires undecided unless an admin acts."""
    free = without_conflicts(call, granted)
    reachable = [p for p in free if p.email]
    teams = guards.required_teams(call.policy)
    if not teams:
        return Audience(reachable, teams)
    members = {p.pk for p in granted if guards.in_required_team(call, p)}
    approvers = [p for p in free if p.pk in members]
    if reached := [p for p in approvers if p.email]:
        return Audience(reached, teams)
    why = "no_address" if approvers else "conflicted" if members else "no_member"
    return Audience(reachable, teams, why)
