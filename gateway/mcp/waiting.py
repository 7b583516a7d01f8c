"""Waiting for a call to settle without holding a thread or a database connection.

A waiting MCP request subscribes to the call's status channel (the one the long-poll uses,
published after every committed change) before it reads the call, so no change is missed,
and reads it again at least every ``RECHECK_SECONDS`` in case a wake-up was lost. The
embedded mode has no Redis: it reads again every ``POLL_SECONDS``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import anyio
import redis.asyncio
from django.conf import settings

from gateway import longpoll
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


async def until_settled(
    *, agent: Agent, call_id: UUID, timeout: float | None, on_tick: Tick | None = None
) -> CallState | None:
    """The agent's call once it is terminal, or as it stands when ``timeout`` seconds have
    passed (None: no limit); None if the agent has no such call."""
    started = time.monotonic()
    deadline = None if timeout is None else started + max(timeout, 0.0)
    last_tick = started
    async with _wake_ups(call_id) as wake_up:
        while True:
            call = await run_sync(state.read, agent, call_id)
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


async def _poll(seconds: float) -> None:
    await anyio.sleep(min(seconds, POLL_SECONDS))


@contextlib.asynccontextmanager
async def _wake_ups(call_id: UUID) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
    """A pause that a change of the call ends early (services mode), or a short sleep (the
    embedded mode, or Redis failing: the wait goes on, only less promptly)."""
    if not settings.REDIS_URL:
        yield _poll
        return
    client = redis.asyncio.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=RECHECK_SECONDS + 5
    )
    pubsub = client.pubsub()
    try:
        try:
            await pubsub.subscribe(longpoll.channel(call_id))
        except redis.RedisError:
            logger.warning("waiting on call %s falls back to polling: Redis failed", call_id)
            yield _poll
            return

        async def next_message(seconds: float) -> None:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                except redis.RedisError:
                    await _poll(left)
                    return
                if message is not None:
                    return

        yield next_message
    finally:
        with contextlib.suppress(redis.RedisError):
            await pubsub.aclose()
            await client.aclose()
