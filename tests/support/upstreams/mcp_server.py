"""A real MCP server, built with the official SDK, run as its own process in the upstream
tests (`uvicorn tests.support.upstreams.mcp_server:app`). Like many servers its
``write_note`` does not refuse a repeat of a key: every call it receives makes a note. Its
``add_entry`` does, as a well-behaved server would: one entry per key, a repeat answered
with the first. It records the key each call carried in ``_meta`` and acts out slowness on
request.

Control: ``POST /_control`` sets ``{"seconds_after_effect": N, "echo": true, "reset": true}``
(with the echo, ``list_notes`` quotes the Authorization header it was sent; reset stops it); ``GET /_effects`` lists
the notes with the key each one came with, the entries by key, and how many calls each key
brought. Its MCP endpoint is ``/mcp``.

The same ``write_note`` and ``list_notes`` are also served at ``/sessions/mcp`` as a server of
the handshake era serves them (the 1.x SDKs, most servers deployed): it keeps sessions,
and refuses a request at a later revision (2026-07-28's ``server/discover``) with 400, so
the client initializes one. ``{"lose_sessions": N}`` ends the session of each of the next N
``tools/call`` it receives before the call reaches it (with the protocol's own DELETE), as a
restart ends every session; the call is then answered 404, unread. ``{"lose_listings": N}``
does the same to the next N ``tools/list``. ``GET /_effects`` says how many are still to be
lost (``sessions_to_lose``, ``listings_to_lose``).

Faults of one key (the soak's, ``bench/soak.py``): ``{"key_faults": {key: {"before": s,
"after": s, "hold": "before" | "after"}}}``; the first call with that key then sleeps
``before`` seconds before its effect and ``after`` seconds after it, or waits at ``hold``
until ``{"release": [key, ...]}`` (at most 120 s); ``GET /_held`` lists the keys waiting
there. Tools run in worker threads, so a slow
call holds up no other.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

IDEMPOTENCY_KEY = "io.countersign/idempotency-key"
HOLD_LIMIT_SECONDS = 120

state: dict[str, Any] = {
    "seconds_after_effect": 0.0,
    "echo": False,
    "lose_sessions": 0,
    "lose_listings": 0,
}
# The requests whose session is ended before they reach the server, and the count of each.
LOSING = {"tools/call": "lose_sessions", "tools/list": "lose_listings"}
notes: list[dict[str, Any]] = []
entries: dict[str, dict[str, Any]] = {}  # by key
requests_by_key: dict[str, int] = {}
key_faults: dict[str, dict[str, Any]] = {}
released: set[str] = set()
held: set[str] = set()
lock = threading.Lock()

server = MCPServer("notes", instructions="A notebook.")


def _key(ctx: Context) -> str:
    meta = ctx.request_context.meta or {}
    key = str(meta.get(IDEMPOTENCY_KEY) or "")
    with lock:
        requests_by_key[key] = requests_by_key.get(key, 0) + 1
        return key


def _fault(key: str) -> dict[str, Any]:
    with lock:
        return key_faults.pop(key, {}) if key else {}


def _act_out(fault: dict[str, Any], point: str, key: str) -> None:
    if fault.get("hold") == point:
        with lock:
            held.add(key)
        try:
            deadline = time.monotonic() + HOLD_LIMIT_SECONDS
            while key not in released and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            with lock:
                held.discard(key)
    elif fault.get(point):
        time.sleep(float(fault[point]))


@server.tool(
    annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    description="List the notes.",
)
def list_notes(ctx: Context) -> dict[str, Any]:
    listed: dict[str, Any] = {"notes": [n["text"] for n in notes]}
    if state["echo"]:
        sent = ctx.request_context.request.headers.get("authorization", "")
        listed["debug"] = {"authorization": sent, "said": f"Called with {sent}."}
    return listed


@server.tool(
    annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    description="A text repeated: an answer of any size.",
)
def repeat_text(text: str, times: int) -> dict[str, Any]:
    return {"text": text * times}


@server.tool(
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False
    ),
    description="Write a note.",
)
def write_note(text: str, ctx: Context) -> dict[str, Any]:
    key = _key(ctx)
    fault = _fault(key)
    _act_out(fault, "before", key)
    with lock:
        notes.append({"text": text, "key": key or None, "at": time.time()})
        count = len(notes)
    _act_out(fault, "after", key)
    if state["seconds_after_effect"]:
        time.sleep(float(state["seconds_after_effect"]))
    return {"written": text, "count": count}


@server.tool(
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False
    ),
    description="Add an entry to the log; once per idempotency key.",
)
def add_entry(text: str, ctx: Context) -> dict[str, Any]:
    key = _key(ctx)
    fault = _fault(key)
    _act_out(fault, "before", key)
    with lock:  # the look-up and the entry in one step: a repeat waits, then replays
        entry = entries.get(key) if key else None
        if entry is None:
            entry = {"entry": len(entries) + 1, "text": text, "at": time.time()}
            entries[key or f"no-key-{len(entries)}"] = entry
    _act_out(fault, "after", key)
    return {"entry": entry["entry"], "text": entry["text"]}


@server.tool(
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
    description="Erase every note.",
)
def erase_notes() -> dict[str, Any]:
    notes.clear()
    return {"erased": True}


mcp_app = server.streamable_http_app(stateless_http=True, json_response=True)

sessions_server = MCPServer("notes-in-sessions", instructions="A notebook.")
sessions_server.add_tool(
    list_notes,
    description="List the notes.",
    annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
)
sessions_server.add_tool(
    write_note,
    description="Write a note.",
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False
    ),
)
sessions_app = sessions_server.streamable_http_app(json_response=True)


def losing_sessions(app: ASGIApp) -> ASGIApp:
    """``app`` as a server of the handshake era, ending the session of a ``tools/call``
    (``tools/list``) before the request while ``lose_sessions`` (``lose_listings``) says so."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        versions = [v.decode() for k, v in scope["headers"] if k == b"mcp-protocol-version"]
        if any(v not in HANDSHAKE_PROTOCOL_VERSIONS for v in versions):
            refusal = {"jsonrpc": "2.0", "id": None, "error": {
                "code": -32000, "message": "Bad Request: Unsupported protocol version"}}  # fmt: skip
            await JSONResponse(refusal, status_code=400)(scope, receive, send)
            return
        if scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        with contextlib.suppress(ValueError):
            losing = LOSING.get(json.loads(body).get("method"))
            if losing and _lose_one(losing):
                await app({**scope, "method": "DELETE"}, _nothing, _ignored)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return serve


def _lose_one(count: str) -> bool:
    with lock:
        if state[count] <= 0:
            return False
        state[count] -= 1
        return True


async def _nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _ignored(message: Message) -> None:
    return None


async def control(request: Request) -> Response:
    changes = await request.json()
    with lock:
        if changes.pop("reset", False):
            for kept in (notes, entries, requests_by_key, key_faults, released):
                kept.clear()
            state["echo"] = False
            state["lose_sessions"] = state["lose_listings"] = 0
        key_faults.update(changes.pop("key_faults", {}))
        released.update(changes.pop("release", []))
        state.update(changes)
    return JSONResponse(state)


async def seen(request: Request) -> Response:
    with lock:
        return JSONResponse(
            {
                "notes": [{"text": n["text"], "key": n["key"]} for n in notes],
                "notes_at": [n["at"] for n in notes],
                "entries": dict(entries),
                "requests": dict(requests_by_key),
                "held": sorted(held),
                "sessions_to_lose": state["lose_sessions"],
                "listings_to_lose": state["lose_listings"],
            }
        )


async def held_now(request: Request) -> Response:
    with lock:
        return JSONResponse(sorted(held))


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with server.session_manager.run(), sessions_server.session_manager.run():
        yield


app = Starlette(
    routes=[
        Route("/_control", control, methods=["POST"]),
        Route("/_effects", seen),
        Route("/_held", held_now),
        Mount("/sessions", losing_sessions(sessions_app)),
        Mount("/", mcp_app),
    ],
    lifespan=lifespan,
)
