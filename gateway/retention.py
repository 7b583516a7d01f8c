"""Rows the edge writes for every run of an agent, deleted once nothing can use them: MCP
sessions that are over (closed, or idle past ``MCP_SESSION_IDLE_SECONDS``: their id
answers 404 already), and agent sessions (round counters) idle past
``AGENT_SESSION_RETENTION_SECONDS``. Both tables would otherwise grow with every
``initialize`` and every call made outside a session, without end."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from gateway.models import AgentSession, McpSession

BATCH = 5000


def sweep(*, now: datetime | None = None) -> int:
    """Delete what is over, in batches (no long lock); returns how many rows."""
    now = now or timezone.now()
    mcp_idle = now - timedelta(seconds=settings.MCP_SESSION_IDLE_SECONDS)
    agent_idle = now - timedelta(seconds=settings.AGENT_SESSION_RETENTION_SECONDS)
    return _delete(
        McpSession.objects.filter(Q(closed_at__isnull=False) | Q(last_seen_at__lt=mcp_idle))
    ) + _delete(
        # The DELETE checks its condition again on a row a new call just counted a round
        # in (PostgreSQL re-reads an updated row): a session in use is never deleted.
        AgentSession.objects.filter(last_call_at__lt=agent_idle)
    )


def _delete(rows: QuerySet[Any]) -> int:
    deleted = 0
    while ids := list(rows.values_list("pk", flat=True)[:BATCH]):
        deleted += rows.filter(pk__in=ids).delete()[0]
    return deleted
