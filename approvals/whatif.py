"""Policy what-if: a tool's proposed rules run against its calls of the last days, before
they are saved. How many calls would have been approved without a reviewer, how many would
have needed more approvals, how many refused, and how many of each the reviewers in fact
rejected: the way a compliance lead tunes a rule without finding out in production. Who
approves is part of the decision: a call that would need as many approvals from other teams
(every approver in each of them), or with a typed confirmation where it had none (or none
where it had one), is decided differently too, and counted so.

Each past call is judged as it arrived: its stored arguments, the risk signals it raised
then, who it was for and which agent made it. Its secret and sensitive fields are masked
first, as a tool admin sees them everywhere else: counting the calls a condition such as
``args.card.startsWith("41")`` matches would otherwise read a masked value out one guess at
a time. Rules on those fields cannot be tried here (they compare a masked marker). What the
detectors find elsewhere in the arguments (an address, a card, a key in a text) and in who
the call was for is read as reviewers see it (``a***@example.com``): masked everywhere else
too, it would be read out the same way; a rule on an address's domain still counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from approvals import screening
from approvals.guards import required_teams, teams_phrase
from approvals.models import Status, ToolCall
from audit.display import partial
from audit.masking import mask_fields, mask_text, mask_value
from tools_registry import rules
from tools_registry.models import Tool

MAX_DAYS = 90
MAX_CALLS = 20_000


@dataclass
class Tally:
    calls: int = 0
    rejected: int = 0  # of those, the ones reviewers rejected

    def add(self, call_status: str) -> None:
        self.calls += 1
        self.rejected += call_status == Status.REJECTED


@dataclass
class WhatIf:
    days: int
    since: datetime
    calls: int = 0
    auto_approved: Tally = field(default_factory=Tally)
    more_approvals: Tally = field(default_factory=Tally)
    fewer_approvals: Tally = field(default_factory=Tally)
    other_teams: Tally = field(default_factory=Tally)  # as many approvals, from other teams
    # as many approvals from the same teams, a typed confirmation of the target asked or not
    other_confirmation: Tally = field(default_factory=Tally)
    refused: Tally = field(default_factory=Tally)
    unchanged: Tally = field(default_factory=Tally)
    not_evaluated: int = 0  # calls on which some rule could not be evaluated
    by_rule: Counter[int] = field(default_factory=Counter)
    # (teams the call asked, teams these rules would ask): calls asking reviewers both ways
    team_changes: Counter[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=Counter)
    truncated: bool = False

    @property
    def rule_counts(self) -> list[tuple[int, int]]:
        return sorted(self.by_rule.items())

    @property
    def team_changes_in_words(self) -> list[tuple[str, str, int]]:
        """Who approved and who would approve, as the reviewer's page says it."""
        return [
            (_who(before), _who(after), count)
            for (before, after), count in sorted(self.team_changes.items())
        ]


def _who(teams: tuple[str, ...]) -> str:
    return teams_phrase(teams) if teams else "any reviewer of the tool"


def run(
    tool: Tool, proposed: list[rules.Rule], *, days: int, now: datetime | None = None
) -> WhatIf:
    """Judge ``tool``'s calls of the last ``days`` by ``proposed`` (already checked with
    ``rules.problems``) and count what would have been different."""
    days = max(1, min(int(days), MAX_DAYS))
    now = now or timezone.now()
    report = WhatIf(days=days, since=now - timedelta(days=days))
    past = (
        ToolCall.objects.filter(tool=tool, created_at__gte=report.since)
        .select_related("agent")
        .only(
            "arguments",
            "signals",
            "on_behalf_of",
            "end_user_roles",
            "policy",
            "approvals_required",
            "status",
            "risk",
            "agent__name",
        )
        .order_by("-created_at")
    )
    for call in past[: MAX_CALLS + 1].iterator(chunk_size=500):
        if report.calls == MAX_CALLS:
            report.truncated = True
            break
        report.calls += 1
        _judge(report, tool, proposed, call)
    return report


def _judge(report: WhatIf, tool: Tool, proposed: list[rules.Rule], call: ToolCall) -> None:
    applied = rules.first_match(
        proposed,
        arguments=mask_value(mask_fields(call.arguments, tool.hidden_fields), render=partial),
        input_schema=tool.input_schema,
        signals=[s.get("code", "") for s in call.signals or []],
        user_id=mask_text(call.on_behalf_of, render=partial),
        roles=list(call.end_user_roles or []),
        agent=call.agent.name,
    )
    applied = screening.within_risk(tool, applied)
    if applied.errors:
        report.not_evaluated += 1
    if applied.number is not None:
        report.by_rule[applied.number] += 1
    # As the intake reads them: a rule that could not be evaluated fails closed (it refuses
    # a read, asks what it would have asked of a write), as counted here.
    outcome = screening.decide(tool, proposed, applied)
    if outcome.refused_by is not None:
        report.refused.add(call.status)
        return
    if call.risk == "read":
        report.unchanged.add(call.status)
        return
    if outcome.by_rule:
        report.auto_approved.add(call.status)
        return
    asked: Any = call.approvals_required
    # The call's snapshot names the teams it asked (its one ``team`` if stored before lists).
    before = tuple(required_teams(call.policy))
    if before != outcome.teams:
        report.team_changes[before, outcome.teams] += 1
    if outcome.approvals > asked:
        report.more_approvals.add(call.status)
    elif outcome.approvals < asked:
        report.fewer_approvals.add(call.status)
    elif before != outcome.teams:
        report.other_teams.add(call.status)
    elif bool((call.policy or {}).get("confirm")) != outcome.confirm:
        report.other_confirmation.add(call.status)
    else:
        report.unchanged.add(call.status)
