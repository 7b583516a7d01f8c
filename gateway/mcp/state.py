"""A call as an MCP client sees it, read in one go (the async handlers never touch the ORM).

The body is exactly what the REST API answers for the call; the rest says, for a person or
a model, what the call is waiting for, and maps its status onto MCP's task statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from approvals.guards import approvals_now
from approvals.models import Status, ToolCall
from gateway import selectors
from gateway.responses import represent_call
from tools_registry.exports import published_output_schema
from tools_registry.models import Agent

# MCP task statuses (protocol 2025-11-25). A tool call whose result is an error ended
# "failed"; a call still waiting for a person, running, or being reconciled is "working".
TASK_STATUS: dict[str, str] = {
    Status.SUCCEEDED: "completed",
    Status.FAILED: "failed",
    Status.REJECTED: "failed",
    Status.EXPIRED: "failed",
    Status.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class CallState:
    id: UUID
    tool: str
    risk: str
    status: str
    terminal: bool
    body: dict[str, Any]  # the REST API's representation of the call
    status_message: str
    created_at: datetime
    updated_at: datetime
    # The schema tools/list publishes for the tool's result (``exports.published_output_schema``).
    output_schema: dict[str, Any] | None = None

    @property
    def task_status(self) -> str:
        return TASK_STATUS.get(self.status, "working")


def of(call: ToolCall, body: dict[str, Any] | None = None) -> CallState:
    """The state of ``call``, which must carry its tool (and reads its decisions); ``body``:
    the REST API's representation of it, if the caller has it already."""
    return CallState(
        id=call.pk,
        tool=call.tool.name,
        risk=call.risk,
        status=call.status,
        terminal=call.is_terminal,
        body=represent_call(call) if body is None else body,
        status_message=status_message(call),
        created_at=call.created_at,
        updated_at=call.updated_at,
        output_schema=published_output_schema(call.tool),
    )


def read(agent: Agent, call_id: UUID) -> CallState | None:
    """The agent's call, or None (another agent's call is as unknown as a missing one)."""
    call = selectors.call_of_agent(agent, call_id)
    return of(call) if call is not None else None


def status_message(call: ToolCall) -> str:
    """Where the call stands, in words a person (or a model) reads at a glance."""
    if call.status == Status.PENDING:
        # Decisions prefetched (or known to be none, for a call just made): no query.
        approvals = approvals_now(call, call.decisions.all(), getattr(call, "approval_count", None))
        expires = f"; expires {call.expires_at:%H:%M} UTC" if call.expires_at else ""
        return f"waiting for approval: {approvals} of {call.approvals_required} reviewers{expires}"
    words: dict[str, str] = {
        Status.RECEIVED: "received; about to run",
        Status.APPROVED: "approved; waiting to run",
        Status.EXECUTING: "approved; running",
        Status.UNKNOWN: "ran, but whether it took effect is being checked with the downstream system",
        Status.SUCCEEDED: "succeeded",
        Status.FAILED: "failed",
        Status.REJECTED: "rejected by a reviewer",
        Status.EXPIRED: "expired: nobody approved it in time",
        Status.CANCELLED: "cancelled",
    }
    return words[call.status]
