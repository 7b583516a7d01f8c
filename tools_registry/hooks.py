"""What the apps above the registry do when an agent is stopped, without the registry
importing them.

``approvals`` registers the cancellation of the agent's pending calls in
``ApprovalsConfig.ready()``; ``services.agents.stop_agent`` calls it inside the stop's
transaction, so the stop and its cancellations commit (or roll back) together, and the stop's
one audit event can list what was cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools_registry.models import Agent

# (agent, reason, the person who stopped it or None) -> ids of the calls it cancelled.
AgentStopped = Callable[["Agent", str, Any], list[str]]

_agent_stopped: list[AgentStopped] = []


def on_agent_stopped(receiver: AgentStopped) -> None:
    if receiver not in _agent_stopped:
        _agent_stopped.append(receiver)


def agent_stopped(agent: Agent, reason: str, stopped_by: Any) -> list[str]:
    """Tell every receiver the agent was stopped; the ids of the calls they cancelled."""
    cancelled: list[str] = []
    for receiver in _agent_stopped:
        cancelled += receiver(agent, reason, stopped_by)
    return cancelled
