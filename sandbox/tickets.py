"""The sandbox ticketing system: a small MCP server, built with the official MCP SDK, that
the demo imports as the upstream ``tickets`` (served at ``/sandbox/tickets/mcp``).

Like a well-behaved downstream, ``create_ticket`` honours the idempotency key a caller
sends in ``_meta["io.countersign/idempotency-key"]``: one ticket per key, whatever the
number of requests. Each call runs in a worker thread with its own database connection.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any, Literal

from django.db import close_old_connections, transaction
from django.utils import timezone
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations

from sandbox import effects
from sandbox.models import Ticket

IDEMPOTENCY_KEY = "io.countersign/idempotency-key"

tickets = MCPServer(
    "tickets",
    instructions="The demo's ticketing system: list, open and close support tickets.",
)


def _as_request[T](work: Callable[[], T]) -> T:
    close_old_connections()
    try:
        return work()
    finally:
        close_old_connections()


@tickets.tool(
    annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    description="List support tickets, newest first. Read only: changes nothing.",
)
def list_tickets(state: Literal["open", "closed", "all"] = "open") -> dict[str, Any]:
    def listed() -> dict[str, Any]:
        found = Ticket.objects.order_by("-created_at")
        if state != "all":
            found = found.filter(state=state)
        return {"tickets": [t.as_dict() for t in found[:50]]}

    return _as_request(listed)


@tickets.tool(
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
    ),
    description="Open a support ticket. Side effect: the support team sees it at once.",
)
def create_ticket(title: str, body: str, ctx: Context) -> dict[str, Any]:
    meta = ctx.request_context.meta or {}
    key = str(meta.get(IDEMPOTENCY_KEY) or f"no-key-{uuid.uuid4()}")

    def create() -> dict[str, Any]:
        ticket = Ticket.objects.create(
            ticket_id=f"tk_{secrets.token_hex(5)}", title=title[:200], body=body
        )
        return ticket.as_dict()

    def once() -> dict[str, Any]:
        with transaction.atomic():
            result, _ = effects.apply_once(tool="tickets.create_ticket", key=key, effect=create)
        return result

    return _as_request(once)


@tickets.tool(
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    ),
    description="Close a support ticket. Closing a closed ticket changes nothing.",
)
def close_ticket(ticket_id: str) -> dict[str, Any]:
    def close() -> dict[str, Any]:
        ticket = Ticket.objects.filter(ticket_id=ticket_id).first()
        if ticket is None:
            raise ValueError(f"No ticket {ticket_id}.")
        if ticket.state != Ticket.State.CLOSED:
            ticket.state = Ticket.State.CLOSED
            ticket.closed_at = timezone.now()
            ticket.save(update_fields=["state", "closed_at"])
        return ticket.as_dict()

    return _as_request(close)
