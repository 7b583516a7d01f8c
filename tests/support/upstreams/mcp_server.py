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

Faults of one key (the soak's, ``bench/soak.py``): ``{"key_faults": {key: {"before": s,
"after": s, "hold": "before" | "after"}}}``; the first call with that key then sleeps
``before`` seconds before its effect and ``after`` seconds after it, or waits at ``hold``
until ``{"release": [key, ...]}`` (at most 120 s); ``GET /_held`` lists the keys waiting
there. Tools run in worker threads, so a slow
call holds up no other.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

IDEMPOTENCY_KEY = "io.countersign/idempotency-key"
HOLD_LIMIT_SECONDS = 120

state: dict[str, Any] = {"seconds_after_effect": 0.0, "echo": False}
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


async def control(request: Request) -> Response:
    changes = await request.json()
    with lock:
        if changes.pop("reset", False):
            for kept in (notes, entries, requests_by_key, key_faults, released):
                kept.clear()
            state["echo"] = False
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
            }
        )


async def held_now(request: Request) -> Response:
    with lock:
        return JSONResponse(sorted(held))


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with server.session_manager.run():
        yield


app = Starlette(
    routes=[
        Route("/_control", control, methods=["POST"]),
        Route("/_effects", seen),
        Route("/_held", held_now),
        Mount("/", mcp_app),
    ],
    lifespan=lifespan,
)
