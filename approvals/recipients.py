"""Who an e-mail about a pending call is for: the tool's reviewers who could approve it, and
what the mail must say when none of them can, or too few to make its quorum
(``approvals.notifications`` sends them)."""

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
    conflicts = guards.conflicts_of_interest(call, people)
    return [p for p in people if not conflicts[p.pk]]


# Why nobody the mails could reach may approve a call whose rule asks for teams, or why those
# who may cannot make its quorum, and what an admin must do about it before the call expires.
NO_APPROVER = {
    "no_member": (
        "Nobody granted review of {tool} is a member of all of the teams this call needs its "
        "approvals from ({teams}), so none of its reviewers can approve it. An admin must act "
        "before it expires: grant the tool to someone in all of them, or add one of its reviewers to them."
    ),
    "conflicted": (
        "The only reviewers of {tool} in all of the teams this call needs its approvals from "
        "({teams}) may not approve it (separation of duties), so none of its reviewers can "
        "approve it. An admin must act before it expires: grant the tool to someone else in all "
        "of them, or add one of its reviewers to them."
    ),
    "no_address": (
        "The reviewers of {tool} in all of the teams this call needs its approvals from "
        "({teams}) have no e-mail address, so they were not told of it. An admin must act "
        "before it expires: give them an address, or tell them."
    ),
    # Superusers may approve any call (in its teams, without a conflict) but, unless granted
    # the tool, are not among the reviewers counted or mailed: the text says so, rather than
    # that nobody can approve it.
    "too_few": (
        "This call needs {needs}, but {able} granted review of {tool}{where} can approve it, "
        "so its reviewers cannot give it the approvals it needs. An admin must act before it "
        "expires: grant the tool to more people who may approve it. A superuser may also "
        "approve it (superusers are not mailed unless granted the tool)."
    ),
}


@dataclass(frozen=True)
class Quorum:
    """The distinct approvals a call needs, those given that still stand, and how many more
    of the tool's reviewers could give one (those who may approve it and have not)."""

    required: int
    given: int
    able: int

    @property
    def short(self) -> bool:
        """Whether the reviewers cannot make the quorum as things stand: unless an admin
        acts, the call expires undecided."""
        return self.able < self.required - self.given

    def needs(self) -> str:
        wanted = _count(self.required, "approval", "approvals")
        return f"{wanted} and has {self.given}" if self.given else wanted

    def who(self) -> str:
        more = "more " if self.given else ""
        if not self.able:
            return "nobody else" if self.given else "nobody"
        return f"only {self.able} {more}{'person' if self.able == 1 else 'people'}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@dataclass(frozen=True)
class Audience:
    """Whom a mail about a call asks for a decision, the teams its approvers must all be in
    ([] for any reviewer of the tool), why nobody the mail reaches can approve it, or not
    enough of them (a key of ``NO_APPROVER``, or ""), and for ``too_few`` the numbers."""

    people: list[Any]
    teams: list[str]
    no_approver: str = ""
    quorum: Quorum | None = None

    def warning(self, tool: str) -> str:
        """What the mail says of ``no_approver``, or ""."""
        if not self.no_approver:
            return ""
        teams = ", ".join(self.teams)
        quorum = self.quorum or Quorum(0, 0, 0)
        return NO_APPROVER[self.no_approver].format(
            tool=tool,
            teams=teams,
            needs=quorum.needs(),
            able=quorum.who(),
            where=f" in all of the teams it needs its approvals from ({teams})" if teams else "",
        )


def quorum(call: ToolCall, approvers: list[Any]) -> Quorum:
    """``call``'s quorum against ``approvers``, those of the tool's reviewers who may approve
    it. An approval that stands counts as given, and its reviewer cannot give another."""
    decisions = list(call.decisions.select_related("reviewer"))
    approved = {d.reviewer_id for d in guards.counting_approvals(decisions, call.arguments_hash)}
    return Quorum(
        required=call.approvals_required,
        given=guards.approvals_that_stand(call, decisions),
        able=sum(1 for p in approvers if p.pk not in approved),
    )


def audience(call: ToolCall, granted: list[Any]) -> Audience:
    """Those of ``granted`` (the tool's reviewers) with an address who could approve ``call``:
    no conflict of interest keeps them from it and, when its rule asks for teams, they are
    in every one (a reviewer outside them may reject but not approve: a mail asking them for
    an approval would send them to a page that refuses it). When no such person can be
    mailed, or fewer of them (mailed or not) could ever approve it than the approvals it
    still needs, all of those without a conflict still hear of the call, told why
    (``no_approver``): it expires undecided unless an admin acts."""
    free = without_conflicts(call, granted)
    reachable = [p for p in free if p.email]
    teams = guards.required_teams(call.policy)
    members = guards.in_required_teams(call, granted)
    approvers = [p for p in free if p.pk in members]
    reached = [p for p in approvers if p.email]
    if teams and not reached:
        why = "no_address" if approvers else "conflicted" if members else "no_member"
        return Audience(reachable, teams, why)
    if (needed := quorum(call, approvers)).short:
        return Audience(reachable, teams, "too_few", needed)
    return Audience(reached, teams)
