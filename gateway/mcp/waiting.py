"""Waiting for a call to settle without holding a thread or a database connection.

A waiting MCP request subscribes to the call's status channel (the one the long-poll uses,
published after every committed change) before it reads the call, so no change is missed,
and reads it again at least every ``RECHECK_SECONDS`` in case a wake-up was lost. The
embedded mode has no Redis: it reads again every ``POLL_SECONDS``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import anyio
import redis.asyncio
from django.conf import settings

from audit.canonical import sha256_hex
from gateway import coordination, longpoll, waits
from gateway.mcp import state
from gateway.mcp.state import CallState
from gateway.mcp.threads import run_sync
from tools_registry.models import Agent

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0
POLL_SECONDS = 0.5
# Progress notifications while a call waits: about this often, whatever woke the wait.
TICK_SECONDS = 5.0

# Called while waiting, at most every RECHECK_SECONDS, with the call as it stands and the
# seconds waited so far: the MCP progress notifications.
Tick = Callable[[CallState, float], Awaitable[None]]


class Cancelled(Exception):
    """The client cancelled the request that waits (``notifications/cancelled``)."""


class CallerGone(Exception):
    """The caller may no longer be answered: its token was revoked, or its agent disabled or
    stopped, while it waited."""


async def until_settled(
    *,
    agent: Agent,
    call_id: UUID,
    timeout: float | None,
    on_tick: Tick | None = None,
    still_allowed: Callable[[], bool] | None = None,
    request: str | None = None,
) -> CallState | None:
    """The agent's call once it is terminal, or as it stands when ``timeout`` seconds have
    passed (None: no limit); None if the agent has no such call.

    Each wait takes one of the agent's ``MAX_WAITS_PER_AGENT`` places (``TooManyWaits``
    when none is free; shared with its REST long-polls, ``gateway.waits``): each holds a
    Redis connection and reads the call every few seconds, and one agent must not hold them
    without end. ``still_allowed`` is asked at every read
    (``CallerGone`` once it says no): a token revoked while its request waits does not get
    the call's result later. ``request`` (``request_key``) names the request that waits, so
    that the client's cancel of it ends the wait (``Cancelled``)."""
    started = time.monotonic()
    deadline = None if timeout is None else started + max(timeout, 0.0)
    last_tick = started
    place = waits.new_place()
    # Shielded: the take runs on in its thread when the request is cancelled (its client
    # left), and a cancel delivered here, before the ``try``, left a place taken that no
    # ``finally`` gave back; it lapsed after PLACE_SECONDS, the agent's waits refused
    # meanwhile. The cancel comes at the next await instead, inside the ``try``.
    with anyio.CancelScope(shield=True):
        taken = await run_sync(waits.places.take, agent.pk, place)
    if not taken:
        raise waits.TooManyWaits
    try:
        async with _wake_ups(call_id, request) as wake_up:
            while True:
                call = await run_sync(_read, agent, call_id, place, still_allowed)
                if call is None or call.terminal:
                    return call
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return call
                now = time.monotonic()
                if on_tick is not None and now - last_tick >= TICK_SECONDS:
                    last_tick = now
                    await on_tick(call, now - started)
                step = RECHECK_SECONDS if remaining is None else min(remaining, RECHECK_SECONDS)
                await wake_up(step)
    finally:
        with anyio.CancelScope(shield=True):
            await run_sync(waits.places.give_back, agent.pk, place)


def _read(
    agent: Agent, call_id: UUID, place: str, still_allowed: Callable[[], bool] | None
) -> CallState | None:
    """One look at the call (in a worker thread), keeping the wait's place."""
    if still_allowed is not None and not still_allowed():
        raise CallerGone
    waits.places.keep(agent.pk, place)
    return state.read(agent, call_id)


# --- A client's cancel of a request that waits -------------------------------------------
# The SDK runs stateless: each POST is a transport of its own, and a client's
# ``notifications/cancelled`` (protocol versions with sessions; later ones close the stream
# instead) reaches no request of the SDK's. The endpoint hands it on here, to the process
# whose request waits: over Redis in services mode, in memory in the embedded one.


def request_key(agent_id: int, session_id: str, request_id: str | int | None) -> str | None:
    """The name of an agent's request within its MCP session; None without a session (the
    request cannot be cancelled by a message of its own then). The id is hashed: a client
    picks it, as long as a body, and a cancel keeps its name in Redis for CANCEL_SECONDS."""
    if not session_id or request_id is None:
        return None
    named = sha256_hex(json.dumps(request_id).encode())
    return coordination.key("mcp-request", agent_id, session_id, named)


# How long a cancel is kept for a request that does not wait yet: the client's cancel and
# its request travel on two connections, and the cancel may be read first (the official
# client's, a few milliseconds after the request, was).
CANCEL_SECONDS = 60


async def cancel(request: str) -> None:
    """End the wait of ``request``, wherever it waits, or as soon as it starts waiting
    (nothing if Redis fails: the wait then ends as it would have, with its call or its
    client)."""
    if coordination.shared():
        with contextlib.suppress(redis.RedisError):
            await run_sync(_mark_and_publish, request)
        return
    if (cancelled := _local_waits.get(request)) is not None:
        cancelled.set()
        return
    now = time.monotonic()
    for stale in [r for r, until in _local_cancels.items() if until <= now]:
        del _local_cancels[stale]
    _local_cancels[request] = now + CANCEL_SECONDS


def _mark_and_publish(request: str) -> None:
    # Marked before it is published, and a wait reads the mark after it subscribes: one of
    # the two reaches it, whichever comes first.
    pipe = coordination.redis_client().pipeline(transaction=False)
    pipe.set(_cancel_mark(request), 1, ex=CANCEL_SECONDS)
    pipe.publish(request, "cancelled")
    pipe.execute()


def _cancel_mark(request: str) -> str:
    return f"{request}:cancelled"


# The embedded mode's requests waiting, by their request_key: one process, one event loop;
# and the cancels that came before their request waited (request_key -> until when kept).
_local_waits: dict[str, anyio.Event] = {}
_local_cancels: dict[str, float] = {}


async def _poll(seconds: float) -> None:
    await anyio.sleep(min(seconds, POLL_SECONDS))


@contextlib.asynccontextmanager
async def _wake_ups(
    call_id: UUID, request: str | None
) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
    """A pause that a change of the call ends early (services mode), or a short sleep (the
    embedded mode, or Redis failing: the wait goes on, only less promptly). A cancel of
    ``request`` ends it with ``Cancelled``."""
    if not settings.REDIS_URL:
        cancelled = anyio.Event()
        if request is not None:
            _local_waits[request] = cancelled
            if _local_cancels.pop(request, 0) > time.monotonic():
                cancelled.set()

        async def poll(seconds: float) -> None:
            with anyio.move_on_after(min(seconds, POLL_SECONDS)):
                await cancelled.wait()
            if cancelled.is_set():
                raise Cancelled

        try:
            yield poll
        finally:
            if request is not None and _local_waits.get(request) is cancelled:
                del _local_waits[request]
        return
    client = redis.asyncio.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=RECHECK_SECONDS + 5
    )
    pubsub = client.pubsub()
    try:
        try:
            await pubsub.subscribe(longpoll.channel(call_id), *([request] if request else []))
        except redis.RedisError:
            logger.warning("waiting on call %s falls back to polling: Redis failed", call_id)
            yield _poll
            return
        if request is not None:
            try:
                cancelled_before = await client.delete(_cancel_mark(request))
            except redis.RedisError:
                cancelled_before = 0
            if cancelled_before:
                raise Cancelled

        async def next_message(seconds: float) -> None:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                except redis.RedisError:
                    await _poll(left)
                    return
                if message is not None:
                    if request is not None and message["channel"] == request.encode():
                        raise Cancelled
                    return

        yield next_message
    finally:
        with contextlib.suppress(redis.RedisError):
            await pubsub.aclose()
            await client.aclose()
