"""Agents: which program may call which tools, audited like any other grant."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from audit.log import record
from tools_registry.models import Agent, Tool

# Agent fields an admin sets; the webhook secret is generated and never shown here.
AGENT_FIELDS = ("name", "description", "owner", "max_rounds_per_session", "enabled")


def _snapshot(agent: Agent, tool_names: Iterable[str]) -> dict[str, Any]:
    return {
        "name": agent.name,
        "description": agent.description,
        "owner": agent.owner.get_username(),
        "max_rounds_per_session": agent.max_rounds_per_session,
        "enabled": agent.enabled,
        "allowed_tools": sorted(tool_names),
    }


@transaction.atomic
def save_agent(
    *, agent: Agent, allowed_tools: Iterable[Tool] | None = None, changed_by: Any
) -> Agent:
    """Create or update ``agent`` (an instance carrying the new values) and its allowlist.

    Audited as ``agent.created`` with the allowlist, or as ``agent.updated`` with the
    before/after values of what changed. Disabling an agent takes effect on its next
    request: authentication reads ``enabled`` every time.
    """
    if agent.max_rounds_per_session < 1:
        raise ValueError("an agent needs at least 1 round per session")
    tools = None if allowed_tools is None else list(allowed_tools)
    if agent._state.adding:
        agent.save()
        if tools is not None:
            agent.allowed_tools.set(tools)
        record(
            action="agent.created",
            actor=changed_by,
            agent=agent,
            data=_snapshot(agent, [t.name for t in tools or []]),
        )
        return agent

    stored = Agent.objects.select_for_update(of=("self",)).select_related("owner").get(pk=agent.pk)
    before = _snapshot(stored, stored.allowed_tools.values_list("name", flat=True))
    agent.save()
    if tools is not None:
        agent.allowed_tools.set(tools)
    after = _snapshot(agent, agent.allowed_tools.values_list("name", flat=True))
    changed = [key for key in after if after[key] != before[key]]
    if changed:
        record(
            action="agent.updated",
            actor=changed_by,
            agent=agent,
            data={
                "before": {key: before[key] for key in changed},
                "after": {key: after[key] for key in changed},
            },
        )
    return agent


def set_enabled(*, agent: Agent, enabled: bool, changed_by: Any) -> Agent:
    """Enable or disable an agent; a disabled agent's next request is refused (401)."""
    stored = Agent.objects.get(pk=agent.pk)
    stored.enabled = enabled
    return save_agent(agent=stored, changed_by=changed_by)
