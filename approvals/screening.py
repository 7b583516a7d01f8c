"""What a call is bound to at intake: its facts, the risk signals it raises, the policy rule
that applies to it, and so how many approvals (from whom) it needs, or whether it needs
none, or is refused.

The result is snapshotted on the call (``ToolCall.policy``): the tool's policy may change
while the call waits; the call keeps the one it was submitted under, and the reviewer's
page and the audit trail show that one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from approvals import signals
from approvals.guards import Refused
from tools_registry import facts as tool_facts
from tools_registry import rules, sources
from tools_registry.facts import CallFacts
from tools_registry.models import Agent, Tool
from tools_registry.policy import Risk
from tools_registry.risk_signals import Found


class RefusedByRule(Refused):
    """A policy rule refuses calls like this one."""

    code = "refused_by_policy"

    def __init__(self, message: str, *, number: int, policy_version: int):
        super().__init__(message)
        self.number = number
        self.policy_version = policy_version


@dataclass(frozen=True)
class Screening:
    facts: CallFacts
    signals: list[Found]
    applied: rules.Applied
    approvals_required: int
    teams: tuple[str, ...]  # every approver a member of each of these (none: anyone granted)
    confirm: bool  # the approver types the call's target (or amount) to confirm
    by_rule: bool  # a rule approves it: no reviewer

    @property
    def reviewable_by_standing_approval(self) -> bool:
        """Whether a standing approval may stand in for the reviewer: only where the tool's
        own policy would ask one reviewer, never where a rule asks for more, a team or a
        confirmation, never when a rule could not be evaluated, never for destructive calls."""
        rule = self.applied.rule
        return (
            not self.applied.errors
            and self.approvals_required == 1
            and not self.teams
            and not self.confirm
            and (rule is None or rule.then == rules.REQUIRE)
        )

    def policy(self, tool: Tool) -> dict[str, Any]:
        """The snapshot stored on the call."""
        return {
            "version": tool.policy_version,
            "approvals_required": self.approvals_required,
            "teams": list(self.teams),
            # The release before reads ``team`` alone, and lets anyone approve a call that
            # names none there: after a rollback, or beside it in a rolling deploy, one of the
            # teams keeps its check (``guards.required_teams`` reads both).
            "team": self.teams[0] if self.teams else "",
            "confirm": self.confirm,
            "ttl_seconds": tool.approval_ttl_seconds,
            "timeout_seconds": tool.timeout_seconds,
            "max_attempts": tool.max_attempts,
            "rule": self.applied.as_dict(),
        }


def screen(
    *,
    agent: Agent,
    tool: Tool,
    arguments: Any,
    reasoning: str,
    user_id: str,
    user_roles: list[str],
    at: datetime,
) -> Screening:
    """Facts, signals and the deciding rule of a call about to be stored; raises
    ``RefusedByRule`` when a rule refuses it."""
    facts = tool_facts.read(sources.facts_of(tool), arguments)
    found = signals.raised(
        agent=agent, tool=tool, arguments=arguments, reasoning=reasoning, facts=facts, at=at
    )
    parsed = rules.parse(tool.rules)
    applied = rules.first_match(
        parsed,
        arguments=arguments,
        input_schema=tool.input_schema,
        signals=[f.code for f in found],
        user_id=user_id,
        roles=user_roles,
        agent=agent.name,
    )
    applied = within_risk(tool, applied)
    outcome = decide(tool, parsed, applied)
    if outcome.refused_by is not None:
        raise RefusedByRule(
            outcome.message, number=outcome.refused_by, policy_version=tool.policy_version
        )
    return Screening(
        facts,
        found,
        applied,
        outcome.approvals,
        outcome.teams,
        outcome.confirm,
        outcome.by_rule,
    )


NEVER_BY_RULE = "a destructive call always needs reviewers; it cannot be approved by rule"


def within_risk(tool: Tool, applied: rules.Applied) -> rules.Applied:
    """``applied`` as the tool's risk class allows it: an ``approve`` that holds on a call of a
    destructive tool approves nothing. Saving one is refused and a risk change drops it
    (``rules.problems``, ``rules.for_risk``), but one stored all the same (a restored
    backup, a row written by hand) approved a destructive call with no reviewer. It counts
    as a rule that could not be evaluated: no later rule applies, and the tool's own policy
    (and any failed rule's) decides."""
    rule = applied.rule
    if rule is None or rule.then != rules.APPROVE or tool.risk != Risk.DESTRUCTIVE:
        return applied
    number = applied.number or 0
    return rules.Applied(
        errors=(*applied.errors, f"rule {number}: {NEVER_BY_RULE}"),
        failed=(*applied.failed, number),
    )


@dataclass(frozen=True)
class Outcome:
    """What the rules decide for a call: refused (by which rule, and what the agent is
    told), or how many approvals it needs, from whom, and whether a rule approves it."""

    refused_by: int | None = None
    message: str = ""
    approvals: int = 0
    teams: tuple[str, ...] = ()  # every approver a member of each of these teams
    confirm: bool = False
    by_rule: bool = False


def decide(tool: Tool, parsed: list[rules.Rule], applied: rules.Applied) -> Outcome:
    """What ``applied`` (``parsed`` evaluated on a call) means for a call of ``tool``: the
    intake and the what-if read the rules alike."""
    rule = applied.rule
    if rule is not None and rule.then == rules.REFUSE:
        return Outcome(
            refused_by=applied.number or 0,
            message=rule.note
            or f"Rule {applied.number} of {tool.name}'s policy refuses this call.",
        )
    # A rule that could not be evaluated on the call might have held: it fails closed. It
    # asks what it would have asked (with the rule that matched, the stricter of the two),
    # and a refusing one refuses a read, which no reviewer could hold.
    failed = [(number, parsed[number - 1]) for number in applied.failed]
    if not tool.needs_approval:
        if rule is not None and rule.then == rules.REQUIRE:
            # Saving one on a read is refused, and a tool made a read has its ``require``
            # rules made refusals (``rules.for_risk``); one stored all the same let the read
            # run, as if nobody had been asked for. No reviewer can hold a read: refused.
            return Outcome(
                refused_by=applied.number or 0,
                message=rule.note
                or f"Rule {applied.number} of {tool.name}'s policy asks for reviewers, and a "
                "read cannot wait for them.",
            )
        for number, could_refuse in failed:
            if could_refuse.then in (rules.REFUSE, rules.REQUIRE):
                might = "refuse it" if could_refuse.then == rules.REFUSE else "ask for reviewers"
                return Outcome(
                    refused_by=number,
                    message=f"Rule {number} of {tool.name}'s policy could not be evaluated on "
                    f"this call and might {might}; a read cannot wait for a reviewer.",
                )
        return Outcome()
    approvals, confirm = tool.approvals_required, tool.risk == Risk.DESTRUCTIVE
    # By name: a team deleted since the rule was saved has no members, so nobody can approve,
    # rather than anybody.
    teams: set[str] = set()
    if rule is not None and rule.then == rules.REQUIRE:
        approvals = rule.approvals
        confirm = confirm or rule.confirm
        teams.add(rule.team)
    for _number, could_require in failed:
        if could_require.then == rules.REQUIRE:
            approvals = max(approvals, could_require.approvals)
            confirm = confirm or could_require.confirm
            # Each team asked for is kept, not the first: one rule's team alone would let its
            # members approve what another rule, had it held, kept from them. An approver in
            # every one of them satisfies each rule that might have applied.
            teams.add(could_require.team)
    teams.discard("")  # a rule without a team narrows nothing: any other team is stricter
    by_rule = rule is not None and rule.then == rules.APPROVE
    if by_rule:
        approvals = 0  # approved as it arrives: no reviewer is asked
    return Outcome(
        approvals=approvals, teams=tuple(sorted(teams)), confirm=confirm, by_rule=by_rule
    )
