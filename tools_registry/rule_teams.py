"""The teams tools' policy rules name. A ``require`` rule names its team by name (a Django
``Group``), so a team deleted or renamed under a rule leaves it asking for approvers from
a team nobody is in: every call it decides can only expire. Saving rules refuses a team
that does not exist (``rules.problems``); the team admin refuses to delete or rename a team
that rules name (``tools_naming``) until they are changed, audited (``update_policy``).

Both sides lock the team's row before they look at the other (``lock_teams``), so a rule
naming a team and the team's deletion, made at once, never both pass: the later one waits
for the earlier to commit, then sees it."""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from operator import or_

from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import Q

from tools_registry import rules
from tools_registry.models import Tool

MAX_LISTED = 10  # tools a message names before "and N more"


def lock_teams(names: Iterable[str]) -> frozenset[str]:
    """Those of ``names`` that are teams now, their rows locked until the transaction ends
    (``FOR NO KEY UPDATE``: a deletion or a rename waits, granting the team a tool does not).
    Called in a transaction only."""
    wanted = set(names)
    if not wanted:
        return frozenset()
    return frozenset(
        Group.objects.select_for_update(no_key=True)
        .filter(name__in=wanted)
        .values_list("name", flat=True)
    )


def tools_naming(teams: Iterable[str]) -> dict[str, list[str]]:
    """Each of ``teams`` that a tool's current rules name, with those tools' names (sorted);
    disabled tools too (enabled again, their rules apply again)."""
    wanted = set(teams)
    if not wanted:
        return {}
    # jsonb containment (``rules @> '[{"team": ...}]'``) finds them without reading every
    # tool's rules; ``teams_named`` then says which of the teams each one names. SQLite (the
    # embedded mode) has no JSON containment, so there every tool's rules are read.
    tools = Tool.objects.order_by("name")
    if connection.vendor == "postgresql":
        tools = tools.filter(
            reduce(or_, (Q(rules__contains=[{"team": team}]) for team in sorted(wanted)))
        )
    named: dict[str, list[str]] = {}
    for tool, raw in tools.values_list("name", "rules"):
        for team in sorted(rules.teams_named(raw) & wanted):
            named.setdefault(team, []).append(tool)
    return named


def still_named(team: str, tools: list[str]) -> str:
    """Why ``team`` may be neither deleted nor renamed, naming the tools whose rules name it."""
    listed = ", ".join(tools[:MAX_LISTED])
    if len(tools) > MAX_LISTED:
        listed += f" and {len(tools) - MAX_LISTED} more"
    return (
        f"The policy rules of {listed} name the team {team!r}: change those rules first "
        "(a rule naming a team that does not exist can never be satisfied; its calls "
        "could only expire)."
    )
