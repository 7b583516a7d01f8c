"""MCP sessions, kept in the database so that any process answers any request.

``initialize`` opens one (its id goes back in the ``Mcp-Session-Id`` header); the client
sends the id with every later request, and closes the session with ``DELETE``. A session
idle for ``MCP_SESSION_IDLE_SECONDS`` is over: its id then answers 404, and the client
starts a new one, as the protocol asks. An agent keeps at most
``MCP_MAX_SESSIONS_PER_AGENT`` sessions.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from core.json_values import storable
from gateway import sql
from gateway.models import McpSession
from tools_registry.models import Agent

# A session's last use is written at most this often (a tenth of the idle limit, if that is
# shorter), so using one is not a write per request.
SEEN_RESOLUTION = timedelta(minutes=1)


def open_session(
    *,
    session_id: UUID,
    agent: Agent,
    client_name: str,
    client_version: str,
    protocol_version: str,
) -> McpSession:
    """A new session of the agent's; past ``MCP_MAX_SESSIONS_PER_AGENT``, its sessions used
    least recently (closed ones first) are deleted: an initialize is a row, and a client
    that never closes its sessions, or one that opens them in a loop, left rows without
    end. Their clients are told 404 at their next request and initialize again."""
    session = McpSession.objects.create(
        id=session_id,
        agent=agent,
        # As the client named itself, but storable: PostgreSQL refuses a NUL.
        client_name=storable(client_name[:100]),
        client_version=storable(client_version[:50]),
        protocol_version=protocol_version[:16],
    )
    newest_first = McpSession.objects.filter(agent=agent).order_by(
        F("closed_at").desc(nulls_first=True), "-last_seen_at", "-created_at"
    )
    evicted = newest_first.values("pk")[settings.MCP_MAX_SESSIONS_PER_AGENT :]
    McpSession.objects.filter(pk__in=evicted).delete()
    return session


def find_session(agent: Agent, session_id: str) -> McpSession | None:
    """The agent's open session with this id, or None (unknown, another agent's, closed or
    idle too long)."""
    try:
        key = UUID(session_id)
    except ValueError:
        return None
    now = timezone.now()
    session = sql.open_mcp_session(agent_id=agent.pk, session_id=key)
    idle = timedelta(seconds=settings.MCP_SESSION_IDLE_SECONDS)
    if session is None or session.last_seen_at < now - idle:
        return None
    # Often enough that a session in use never looks idle, under a short limit too, and
    # one unused is over within a tenth of the limit of when it should be.
    if now - session.last_seen_at > min(SEEN_RESOLUTION, idle / 10):
        McpSession.objects.filter(pk=key).update(last_seen_at=now)
    return session


def close_session(agent: Agent, session_id: str) -> bool:
    """End the agent's session; whether there was one open."""
    session = find_session(agent, session_id)
    if session is None:
        return False
    McpSession.objects.filter(pk=session.pk).update(closed_at=timezone.now())
    return True
