"""A real MCP server, built with the official SDK, run as its own process in the upstream
tests (`uvicorn tests.support.upstreams.mcp_server:app`). Like many servers it does not
refuse a repeat of a key: every call it receives makes a note. It records the key each call
carried in ``_meta`` and acts out slowness on request.

Control: ``POST /_control`` sets ``{"seconds_after_effect": N, "reset": true}``; ``GET /_effects`` lists
the notes with the key each one came with. Its MCP endpoint is ``/mcp``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

state: dict[str, Any] = {"seconds_after_effect": 0.0}
notes: list[dict[str, Any]] = []

server = MCPServer("notes", instructions="A notebook.")


@server.tool(
    annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    description="List the notes.",
)
def list_notes() -> dict[str, Any]:
    return {"notes": [n["text"] for n in notes]}


@server.tool(
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False
    ),
    description="Write a note.",
)
def write_note(text: str, ctx: Context) -> dict[str, Any]:
    meta = ctx.request_context.meta or {}
    notes.append({"text": text, "key": meta.get("io.countersign/idempotency-key")})
    if state["seconds_after_effect"]:
        time.sleep(float(state["seconds_after_effect"]))
    return {"written": text, "count": len(notes)}


@server.tool(
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
    description="Erase every note.",
)
def erase_notes() -> dict[str, Any]:
    notes.clear()
    return {"erased": True}


mcp_app = server.streamable_http_app(stateless_http=True, json_response=True)


async def control(request: Request) -> Response:
    changes = await request.json()
    if changes.pop("reset", False):
        notes.clear()
    state.update(changes)
    return JSONResponse(state)


async def seen(request: Request) -> Response:
    return JSONResponse({"notes": notes})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with server.session_manager.run():
        yield


app = Starlette(
    routes=[
        Route("/_control", control, methods=["POST"]),
        Route("/_effects", seen),
        Mount("/", mcp_app),
    ],
    lifespan=lifespan,
)
