"""The rules a call is checked against before it moves: what an approval binds to,
who may not approve it, and whether it may still run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from django.utils.crypto import salted_hmac

from accounts.models import SsoIdentity
from approvals.models import Decision, ToolCall
from audit.canonical import canonical_json, sha256_hex
from tools_registry import role_scopes
from tools_registry.models import AgentToken
from tools_registry.permissions import reviewers_among
from tools_registry.role_scopes import folded


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


def shown_digest(digest: str) -> str:
    """What a reviewer's page carries for a hash of what it shows (the arguments, the state)
    to bind a verdict to it: keyed with the site's secret. The bare SHA-256 would let whoever
    reads the page try guesses of a value masked on it offline (the rest of the canonical
    JSON is on the page): an address's local part, a card's middle digits, in a moment."""
    if not digest:
        return ""
    return salted_hmac("approvals.shown", digest, algorithm="sha256").hexdigest()


def is_shown(shown: str | None, digest: str) -> bool:
    """Whether ``shown`` (a page's ``shown_digest``, or the hash itself from a caller that
    holds it) stands for ``digest``."""
    return bool(shown) and bool(digest) and shown in (digest, shown_digest(digest))


def counting_approvals(decisions: Iterable[Any], bound_hash: str) -> list[Any]:
    """The approvals that count towards a call's quorum: those given to its arguments as
    they are now. After a reviewer corrects the arguments, earlier approvals approved
    something else."""
    return [d for d in decisions if d.verdict == "approve" and d.arguments_hash == bound_hash]


def counted_approvals(decisions: Iterable[Any], bound_hash: str) -> int:
    """How many ``counting_approvals`` there are."""
    return len(counting_approvals(decisions, bound_hash))


def approvals_that_stand(call: ToolCall, decisions: Iterable[Any]) -> int:
    """``counted_approvals``, less those whose reviewer could not give them now: an approval
    is a person's say-so, and once their grant of the tool is taken away, their account
    deactivated, or they leave the team the call's rule asks for, the call waits for someone
    who may still approve it. (Rejections stand whoever gave them: stopping harm stays easy.)
    """
    approvals = counting_approvals(decisions, call.arguments_hash)
    standing = still_approving(call, [d.reviewer for d in approvals])
    return sum(1 for d in approvals if d.reviewer.pk in standing)


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


def approvals_that_stand_on(calls: Sequence[ToolCall]) -> dict[Any, int]:
    """``approvals_that_stand`` of each of ``calls``, by call id, in a few queries however
    many they are (one more per tool among them): the queue asks it of each row whose
    approvals given make its quorum while it still waits, and asked of each in turn, a page
    of such rows cost a few queries per row at every refresh."""
    if not calls:
        return {}
    decisions: dict[Any, list[Any]] = {call.pk: [] for call in calls}
    for decision in Decision.objects.filter(
        call_id__in=list(decisions), verdict="approve"
    ).select_related("reviewer"):
        decisions[decision.call_id].append(decision)
    approvals = {
        call.pk: counting_approvals(decisions[call.pk], call.arguments_hash) for call in calls
    }
    standing = _still_approving_on(
        [(call, [d.reviewer for d in approvals[call.pk]]) for call in calls]
    )
    return {
        call.pk: sum(1 for d in approvals[call.pk] if d.reviewer.pk in standing[call.pk])
        for call in calls
    }


def still_approving(call: ToolCall, people: Sequence[Any]) -> set[Any]:
    """The ids of those of ``people`` who could approve ``call`` now, as far as who they are
    goes: they may review its tool, no conflict of interest keeps them from it, and they are
    in the teams its rule asks for. In four queries at most however many they are (one while
    none may review its tool): the quorum sweep asks it of the approvers of each call it
    looks at, and a call's page of its approvers, checked one by one at two to four queries
    each."""
    return _still_approving_on([(call, people)])[call.pk]


def _still_approving_on(asked: Sequence[tuple[ToolCall, Sequence[Any]]]) -> dict[Any, set[Any]]:
    """``still_approving`` of each (call, people), by call id, each step asked once for all
    of them: whether they may review, per tool (one query each); their conflicts of
    interest (``conflicts_of_interest``), then their teams (``in_required_teams``), for all
    the calls at once."""
    tools = {call.tool_id: call.tool for call, _ in asked}
    named: dict[Any, dict[Any, Any]] = {tool_id: {} for tool_id in tools}
    for call, people in asked:
        named[call.tool_id].update((person.pk, person) for person in people)
    reviewers = {
        tool_id: reviewers_among(tools[tool_id], list(people.values()))
        for tool_id, people in named.items()
    }
    able = [
        (call, [person for person in people if person.pk in reviewers[call.tool_id]])
        for call, people in asked
    ]
    if not any(people for _, people in able):
        return {call.pk: set() for call, _ in asked}
    # The agent's owner needs nothing read (``_not_owning``).
    read = {p.pk: p for call, people in able for p in _not_owning(call.agent, people)}
    acting_for = {
        call.pk: _acting_for(call.on_behalf_of, call.end_user_aliases or ()) for call, _ in able
    }
    known = _Known.load(
        list(read.values()),
        {call.agent_id for call, _ in able},
        names=any(acting_for.values()),
    )
    teams = {call.pk: set(required_teams(call.policy)) for call, _ in able}
    everyone = {person.pk for _, people in able for person in people}
    theirs = _teams_of(list(everyone), set().union(*teams.values()))
    return {
        call.pk: {
            person.pk
            for person in people
            if not _on_call(call, person, acting_for[call.pk], known)
            and teams[call.pk] <= theirs.get(person.pk, set())
        }
        for call, people in able
    }


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
    return person.pk in in_required_teams(call, [person])


def in_required_teams(call: ToolCall, people: Sequence[Any]) -> set[Any]:
    """The ids of those of ``people`` who are ``in_required_team``, in one query at most:
    the notification sweeps ask it of every reviewer of every call they mail about."""
    teams = set(required_teams(call.policy))
    if not teams:
        return {person.pk for person in people}
    theirs = _teams_of([person.pk for person in people], teams)
    return {person.pk for person in people if teams <= theirs.get(person.pk, set())}


def approvers_if_outside(call: ToolCall, person: Any) -> str:
    """Who may approve ``call``, in words (``teams_phrase``), when ``person`` is not in every
    team its policy asks its approvals from; "" when they are, or it asks none."""
    return approvers_if_outside_on([call], person)[call.pk]


def approvers_if_outside_on(calls: Sequence[ToolCall], person: Any) -> dict[Any, str]:
    """``approvers_if_outside`` for each of ``calls``, by call id, in one query at most (the
    "needs attention" page asks it of every call it lists)."""
    required = {call.pk: set(required_teams(call.policy)) for call in calls}
    named = set().union(*required.values())
    theirs = _teams_of([person.pk], named).get(person.pk, set()) if named else set()
    return {
        pk: "" if teams <= theirs else teams_phrase(sorted(teams)) for pk, teams in required.items()
    }


def _teams_of(people_ids: Sequence[Any], teams: set[str]) -> dict[Any, set[str]]:
    """Which of ``teams`` each person is a member of, by person id, in one query."""
    found: dict[Any, set[str]] = {}
    if not people_ids or not teams:
        return found
    for person_id, team in (
        get_user_model()
        .objects.filter(pk__in=people_ids, groups__name__in=teams)
        .values_list("pk", "groups__name")
    ):
        found.setdefault(person_id, set()).add(team)
    return found


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
    (``on_behalf_of``, or another name their verified token gave them, ``end_user_aliases``,
    matched to the person's username, e-mail or single sign-on ``sub``),
    and whoever issued one of the agent's tokens that was live when the call was made (they
    were shown its secret: the call may be theirs) may reject a call but never let it run.
    """
    return conflicts_of_interest(call, [person])[person.pk]


def conflicts_of_interest(call: ToolCall, people: Sequence[Any]) -> dict[Any, str]:
    """``conflict_of_interest`` of each of ``people``, by id, in two queries at most (the
    notification sweeps ask it of every reviewer of every call they mail about)."""
    acting_for = _acting_for(call.on_behalf_of, call.end_user_aliases or ())
    known = _Known.load(_not_owning(call.agent, people), [call.agent_id], names=bool(acting_for))
    return {person.pk: _on_call(call, person, acting_for, known) for person in people}


def conflicts_on_calls(calls: Sequence[ToolCall], person: Any) -> dict[Any, str]:
    """``conflict_of_interest`` of ``person`` on each of ``calls``, by call id, in two
    queries at most (the "needs attention" page asks it of every call it lists)."""
    acting_for = {
        call.pk: _acting_for(call.on_behalf_of, call.end_user_aliases or ()) for call in calls
    }
    known = _Known.load([person], {call.agent_id for call in calls}, names=any(acting_for.values()))
    return {call.pk: _on_call(call, person, acting_for[call.pk], known) for call in calls}


def conflict_with(
    *,
    agent: Any,
    on_behalf_of: str,
    person: Any,
    aliases: Sequence[str] = (),
    made_at: datetime | None = None,
) -> str:
    """``conflict_of_interest`` for a call of ``agent`` for ``on_behalf_of`` (known by
    ``aliases`` too) made at ``made_at``; before it is stored (a standing approval about to
    cover it), now."""
    return conflicts_with(
        agent=agent, on_behalf_of=on_behalf_of, aliases=aliases, people=[person], made_at=made_at
    )[person.pk]


def conflicts_with(
    *,
    agent: Any,
    on_behalf_of: str,
    people: Sequence[Any],
    aliases: Sequence[str] = (),
    made_at: datetime | None = None,
) -> dict[Any, str]:
    """``conflict_with`` of each of ``people``, by id: one query for the single sign-on
    subjects when the call names an end user, one for the agent's tokens they issued."""
    acting_for = _acting_for(on_behalf_of, aliases)
    known = _Known.load(_not_owning(agent, people), [agent.pk], names=bool(acting_for))
    made_at = made_at or timezone.now()
    return {person.pk: _conflict(agent, person, acting_for, made_at, known) for person in people}


@dataclass(frozen=True)
class _Known:
    """What separation of duties reads of some people: their single sign-on subjects, and
    when each token they issued to some agents was live; read at once for many people (one
    call) or many calls (one person), never a query per pair."""

    subjects: dict[Any, list[str]]
    # (agent id, issuer id): each token's (created_at, revoked_at).
    tokens: dict[tuple[Any, Any], list[tuple[datetime, datetime | None]]]

    @classmethod
    def load(cls, people: Sequence[Any], agent_ids: Iterable[Any], *, names: bool) -> _Known:
        """``names``: whether any call names an end user (only then are subjects read)."""
        ids = [person.pk for person in people]
        subjects: dict[Any, list[str]] = {}
        tokens: dict[tuple[Any, Any], list[tuple[datetime, datetime | None]]] = {}
        if not ids:
            return cls(subjects, tokens)
        if names:
            for user_id, subject in SsoIdentity.objects.filter(user_id__in=ids).values_list(
                "user_id", "subject"
            ):
                subjects.setdefault(user_id, []).append(subject)
        for agent_id, issuer_id, created_at, revoked_at in AgentToken.objects.filter(
            agent_id__in=list(agent_ids), created_by_id__in=ids
        ).values_list("agent_id", "created_by_id", "created_at", "revoked_at"):
            tokens.setdefault((agent_id, issuer_id), []).append((created_at, revoked_at))
        return cls(subjects, tokens)


def _not_owning(agent: Any, people: Sequence[Any]) -> list[Any]:
    """Those of ``people`` who do not own ``agent`` (its owner needs nothing read)."""
    return [person for person in people if person.pk != agent.owner_id]


def _acting_for(on_behalf_of: str, aliases: Sequence[str]) -> set[str]:
    names = {folded(name) for name in (on_behalf_of, *aliases) if isinstance(name, str)}
    names.discard("")
    return names


def _on_call(call: ToolCall, person: Any, acting_for: set[str], known: _Known) -> str:
    found = _conflict(call.agent, person, acting_for, call.created_at, known)
    if not found and call.agent_owner_id == person.pk:
        return "former_owner"  # the agent changed hands: it may be theirs
    return found


def _conflict(
    agent: Any, person: Any, acting_for: set[str], made_at: datetime, known: _Known
) -> str:
    """The one rule of ``conflict_with``, on what ``known`` read."""
    if agent.owner_id == person.pk:
        return "owner"
    # A verified user is named by their token's claim, by default its ``sub``: the one their
    # sign-in through the same provider is linked to, not their account's name. Their token's
    # other names (its e-mail, its preferred_username) find them when their account is not
    # linked to that ``sub`` (they sign in with a password).
    if acting_for:
        names = {person.get_username(), person.email or "", *known.subjects.get(person.pk, [])}
        if acting_for & {folded(name) for name in names}:
            return "on_behalf_of"
    # A token live when the call was made: its issuer was shown its secret.
    if any(
        created_at <= made_at and (revoked_at is None or revoked_at > made_at)
        for created_at, revoked_at in known.tokens.get((agent.pk, person.pk), [])
    ):
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
    if definition_changed(call):
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


def definition_changed(call: ToolCall) -> bool:
    """Whether the tool is no longer what the call was made, screened and approved for: a
    new version, or a new risk class. A tool declared in code keeps its version (a hash of
    its name, description and schema) when only its risk changes, yet a write made
    destructive was screened as a write: one approval, no typed confirmation, no recent
    sign-in, the agent's retry allowed. (An upstream's tool binds its risk into its version.)"""
    return call.tool.version != call.tool_version or call.tool.risk != call.risk


def policy_changed(call: ToolCall) -> bool:
    """Whether the tool's policy changed since the call was screened and approved under it
    (``ToolCall.policy``, its version): a rule may now refuse it, or ask more approvals, a
    team or a typed confirmation. (A call stored without a version counts as changed: fail
    closed.) Not a reason to refuse its claim: the approval was given under the policy of
    its time; a re-run the agent asks for later is a new use of it (``calls.retry_call``)."""
    return (call.policy or {}).get("version") != call.tool.policy_version


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
