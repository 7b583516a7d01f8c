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
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID, uuid4

import anyio
import redis.asyncio
from django.conf import settings

from gateway import coordination, longpoll
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


class TooManyWaits(Exception):
    """The agent already has ``MCP_MAX_WAITS_PER_AGENT`` waits open."""


class WaitsUncounted(TooManyWaits):
    """Redis, which counts the agent's waits, cannot be reached: no wait is taken (answered
    like too many waits, the call as it stands, or ``unavailable``)."""


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

    Each wait takes one of the agent's ``MCP_MAX_WAITS_PER_AGENT`` places (``TooManyWaits``
    when none is free): each holds a Redis connection and reads the call every few seconds,
    and one agent must not hold them without end. ``still_allowed`` is asked at every read
    (``CallerGone`` once it says no): a token revoked while its request waits does not get
    the call's result later. ``request`` (``request_key``) names the request that waits, so
    that the client's cancel of it ends the wait (``Cancelled``)."""
    started = time.monotonic()
    deadline = None if timeout is None else started + max(timeout, 0.0)
    last_tick = started
    place = uuid4().hex
    if not await run_sync(_places.take, agent.pk, place):
        raise TooManyWaits
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
            await run_sync(_places.give_back, agent.pk, place)


def _read(
    agent: Agent, call_id: UUID, place: str, still_allowed: Callable[[], bool] | None
) -> CallState | None:
    """One look at the call (in a worker thread), keeping the wait's place."""
    if still_allowed is not None and not still_allowed():
        raise CallerGone
    _places.keep(agent.pk, place)
    return state.read(agent, call_id)


# A place not kept this long (its process died mid-wait) is free again; a wait keeps its
# place at every read, at most RECHECK_SECONDS apart.
PLACE_SECONDS = 30


class _Places:
    """The open waits of each agent: in Redis (a sorted set per agent, members scored by
    when they lapse) shared by every web process; in memory in the embedded mode."""

    _TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""
    _KEEP = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local: dict[int, set[str]] = {}

    def take(self, agent_id: int, place: str) -> bool:
        limit = settings.MCP_MAX_WAITS_PER_AGENT
        if coordination.shared():
            client = coordination.redis_client()
            key = coordination.key("mcp-waits", agent_id)
            try:
                return bool(client.eval(self._TAKE, 1, key, limit, PLACE_SECONDS, place))
            except redis.RedisError:
                # Not counted, not taken: uncounted waits (polling, without Redis) are
                # what the limit is there to stop.
                logger.warning("an MCP wait of agent %s is refused: Redis failed", agent_id)
                raise WaitsUncounted from None
        with self._lock:
            places = self._local.setdefault(agent_id, set())
            if len(places) >= limit:
                return False
            places.add(place)
            return True

    def keep(self, agent_id: int, place: str) -> None:
        if coordination.shared():
            key = coordination.key("mcp-waits", agent_id)
            # A place not kept lapses by itself (PLACE_SECONDS): a Redis blip does not end
            # the wait, which reads the call from the database.
            with contextlib.suppress(redis.RedisError):
                coordination.redis_client().eval(self._KEEP, 1, key, PLACE_SECONDS, place)

    def give_back(self, agent_id: int, place: str) -> None:
        if coordination.shared():
            key = coordination.key("mcp-waits", agent_id)
            with contextlib.suppress(redis.RedisError):  # it lapses by itself
                coordination.redis_client().zrem(key, place)
            return
        with self._lock:
            self._local.get(agent_id, set()).discard(place)


_places = _Places()


# --- A client's cancel of a request that waits -------------------------------------------
# The SDK runs stateless: each POST is a transport of its own, and a client's
# ``notifications/cancelled`` (protocol versions with sessions; later ones close the stream
# instead) reaches no request of the SDK's. The endpoint hands it on here, to the process
# whose request waits: over Redis in services mode, in memory in the embedded one.


def request_key(agent_id: int, session_id: str, request_id: str | int | None) -> str | None:
    """The name of an agent's request within its MCP session; None without a session (the
    request cannot be cancelled by a message of its own then)."""
    if not session_id or request_id is None:
        return None
    return coordination.key("mcp-request", agent_id, session_id, json.dumps(request_id))


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
