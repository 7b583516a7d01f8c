"""``GET /tool-calls/{id}?wait=N``: answer when the call's status changes, or after N s.

A waiting request holds no database connection: it reads the call, gives its connection
back (to the pool), and sleeps on a Redis pub/sub channel of that call, which
``notify.status_changed`` publishes to after commit. It subscribes *before* reading, so a
change committed between the read and the wait still wakes it. Every ``RECHECK_SECONDS``
it reads the call again anyway, which bounds the delay if a wake-up was lost (a publisher
that died between commit and publish, a Redis blip). The embedded mode has no Redis; it
re-reads every ``POLL_SECONDS`` instead.

Each waiting request holds one Redis connection and one web thread for the duration of its
wait, and one of its agent's places (``gateway.waits``, shared with MCP's waits): one agent
cannot hold every thread of the web processes with long-polls. However many agents wait,
at most three in four of a process's threads wait (``threads_for_waits``), the rest kept for
requests that do not wait: a process of one thread (gunicorn's sync workers,
``WEB_THREADS=1``) lets no long-poll wait at all. A request whose client hung up stops
waiting within ``HANG_UP_CHECK_SECONDS`` where the server lets that be seen
(``gateway.hangups``), giving its thread and its place back; elsewhere it waits on to its
deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from uuid import UUID

import redis
from django.conf import settings
from django.db import connection

from approvals.models import ToolCall
from gateway import coordination, selectors, waits
from tools_registry.models import Agent

logger = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60
RECHECK_SECONDS = 5.0
POLL_SECONDS = 0.5
# How often a wait on Redis asks whether its client hung up (a peek at a socket, or an
# event: cheap), between the wake-ups and re-reads that come every RECHECK_SECONDS.
HANG_UP_CHECK_SECONDS = 1.0


def channel(call_id: UUID | str) -> str:
    return coordination.key("call", call_id)


def publish(call_id: UUID | str, status: str) -> None:
    if coordination.shared():
        coordination.redis_client().publish(channel(call_id), status)


@dataclass(frozen=True)
class _Wait:
    """One long-poll: the agent's call, the status it waits to change from (``seen``; empty:
    the status at its first read), until when (``time.monotonic()``), and the caller's two
    questions (see ``wait_for_change``)."""

    agent: Agent
    call_id: UUID
    seen: str
    deadline: float
    still_allowed: Callable[[], None]
    hung_up: Callable[[], bool]

    def read(self) -> ToolCall | None:
        return selectors.call_of_agent(self.agent, self.call_id)


def wait_for_change(
    *,
    agent: Agent,
    call_id: UUID,
    wait: float,
    seen: str = "",
    still_allowed: Callable[[], None] = lambda: None,
    hung_up: Callable[[], bool] = lambda: False,
) -> ToolCall | None:
    """The call once its status differs from ``seen`` (default: its status now), is
    terminal, or ``wait`` seconds passed; None if the agent has no such call.

    A wait takes one of this process's threads for waits (``ThreadsTaken`` when none is
    free) and one of the agent's places (``gateway.waits``: ``TooManyWaits`` when none is
    free), when the call would be waited for. ``still_allowed`` is called before each read
    after a pause, and raises once the caller may no longer read (a token revoked, an agent
    stopped while the request waited). ``hung_up`` says whether the request's client went
    away (``gateway.hangups``): the wait then ends early, with the call as last read, an
    answer nobody reads."""
    wait = max(0.0, min(float(wait), MAX_WAIT_SECONDS))
    if wait <= 0:
        return selectors.call_of_agent(agent, call_id)
    waiting = _Wait(agent, call_id, seen, time.monotonic() + wait, still_allowed, hung_up)
    try:
        with _threads.holding():
            try:
                with waits.holding(agent.pk) as keep:
                    return _wait_in_place(
                        replace(waiting, still_allowed=_kept(keep, still_allowed))
                    )
            except waits.WaitsUncounted:
                # Redis, which counts the agent's places, is down: the wait goes on
                # uncounted, polling the database, within this process's share of its
                # threads (counted here), rather than failing every agent's waits for as
                # long as Redis is away.
                return _wait_in_place(waiting)
    except waits.TooManyWaits:
        # No place, but nothing to wait for either (an ended call, a stale ``seen``, none of
        # the agent's): that is the answer, as it would have been at once with a place.
        call = waiting.read()
        if _done(call, seen or (call.status if call else "")):
            return call
        raise


class ThreadsTaken(waits.TooManyWaits):
    """This process's long-polls hold every web thread they may (``threads_for_waits``)."""


def threads_for_waits() -> int:
    """The web threads of this process that long-polls may hold at once: three in four of
    ``WEB_THREADS``, rounded down, so that at least one is kept for requests that do not wait
    (reviewers' pages, submissions, reads) however many agents long-poll at once. With one
    thread that is none: a long-poll that took it would hold up every other request of the
    process until its deadline. An agent's own limit (``gateway.waits``) keeps one agent
    from taking them all."""
    return int(settings.WEB_THREADS) * 3 // 4


class _Threads:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = 0

    @contextmanager
    def holding(self) -> Iterator[None]:
        with self._lock:
            if self._held >= threads_for_waits():
                raise ThreadsTaken
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1


_threads = _Threads()


def _kept(keep: Callable[[], None], still_allowed: Callable[[], None]) -> Callable[[], None]:
    """``still_allowed``, keeping the wait's place too: it is asked before each read after a
    pause, at most ``RECHECK_SECONDS`` apart, well within a place's ``PLACE_SECONDS``."""

    def check() -> None:
        still_allowed()
        keep()

    return check


def _wait_in_place(waiting: _Wait) -> ToolCall | None:
    if coordination.shared():
        try:
            return _wait_on_redis(waiting)
        except redis.RedisError:
            # It could not subscribe (a failure mid-wait is ``_wait``'s to handle).
            logger.warning(
                "long-poll of call %s falls back to polling: Redis failed", waiting.call_id
            )
    return _wait(waiting, pause=time.sleep, step=POLL_SECONDS)


def _done(call: ToolCall | None, baseline: str) -> bool:
    return call is None or call.is_terminal or call.status != baseline


def _release_connection() -> None:
    """Give the database connection back while this request only waits.

    Inside an atomic block (a test's transaction) closing would end the transaction, so
    the connection stays; the next query reopens or re-borrows one as needed.
    """
    if not connection.in_atomic_block:
        connection.close()


def _wait(waiting: _Wait, *, pause: Callable[[float], object], step: float) -> ToolCall | None:
    """Read the call until it changed or the deadline passed, pausing up to ``step``
    seconds at a time with no database connection held. A pause on Redis that fails turns
    the rest of the wait into polling, against the same baseline: started afresh, the wait
    took the status a change made meanwhile (its wake-up lost with Redis) for the one to
    wait on, and answered it only at the deadline."""
    call = waiting.read()
    baseline = waiting.seen or (call.status if call else "")
    while not _done(call, baseline):
        remaining = waiting.deadline - time.monotonic()
        if remaining <= 0:
            break
        _release_connection()
        try:
            pause(min(remaining, step))
        except redis.RedisError:
            logger.warning(
                "long-poll of call %s falls back to polling: Redis failed", waiting.call_id
            )
            pause, step = time.sleep, POLL_SECONDS
        if waiting.hung_up():
            # Nobody reads the answer: give the thread and the place back now.
            logger.info("long-poll of call %s ends early: its client hung up", waiting.call_id)
            break
        waiting.still_allowed()
        call = waiting.read()
    return call


def _wait_on_redis(waiting: _Wait) -> ToolCall | None:
    pubsub = coordination.redis_client().pubsub()
    try:
        # Subscribed before the first read: a change committed in between still wakes it.
        pubsub.subscribe(channel(waiting.call_id))
        return _wait(
            waiting,
            pause=lambda seconds: _next_message(pubsub, seconds, waiting.hung_up),
            step=RECHECK_SECONDS,
        )
    finally:
        pubsub.close()


def _next_message(
    pubsub: redis.client.PubSub, timeout: float, hung_up: Callable[[], bool] = lambda: False
) -> bool:
    """Block until a status message arrives (True) or ``timeout`` passes (False), or the
    client hung up (False), which is asked every ``HANG_UP_CHECK_SECONDS``."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=min(left, HANG_UP_CHECK_SECONDS))
        if message is not None and message.get("type") == "message":
            return True
        if hung_up():
            return False
    return False
