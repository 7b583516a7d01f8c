"""The reads behind the agent API: an agent sees its own calls and no one else's."""

from __future__ import annotations

from uuid import UUID

from django.db.models import Count, F, Q, QuerySet

from approvals.models import ToolCall, Verdict
from tools_registry.models import Agent


def calls_of_agent(agent: Agent) -> QuerySet[ToolCall]:
    return ToolCall.objects.filter(agent=agent).select_related("tool")


def call_of_agent(agent: Agent, call_id: UUID) -> ToolCall | None:
    return _counted(agent).filter(pk=call_id).first()


def call_by_request_key(agent: Agent, key: str) -> ToolCall | None:
    """The agent's call made under the Idempotency-Key ``key`` (calls keep their key after
    the key's record is swept)."""
    return _counted(agent).filter(request_key=key).first()


def _counted(agent: Agent) -> QuerySet[ToolCall]:
    # The approvals that count (approvals.guards.counted_approvals): those given to the
    # arguments as they are now, not to what a reviewer's correction replaced.
    counted = Q(decisions__verdict=Verdict.APPROVE, decisions__arguments_hash=F("arguments_hash"))
    return calls_of_agent(agent).annotate(approval_count=Count("decisions", filter=counted))
