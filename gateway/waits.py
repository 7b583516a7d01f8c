"""The places of requests that wait for a call to end: at most ``MAX_WAITS_PER_AGENT`` of
one agent's at once, over REST (a long-poll, ``gateway.longpoll``) and MCP
(``gateway.mcp.waiting``) together, across every web process.

Each wait holds a Redis connection, and a REST long-poll a web thread besides, for up to
a minute (an MCP ``tasks/result``, until its call ends): without a limit one agent could
hold them all, and every other agent's requests would queue behind its waits. One count
per agent for both doors, since an agent's waits through either hold the same connections.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from uuid import uuid4

import redis
from django.conf import settings

from gateway import coordination

logger = logging.getLogger(__name__)

# A place not kept this long (its process died mid-wait) is free again; a wait keeps its
# place at every read of its call, which comes at most 5 s (a recheck) apart.
PLACE_SECONDS = 30


class TooManyWaits(Exception):
    """The agent already has ``MAX_WAITS_PER_AGENT`` waits open."""


class WaitsUncounted(TooManyWaits):
    """Redis, which counts the agent's waits, cannot be reached: no wait is taken (answered
    like too many waits, the call as it stands, or ``unavailable``)."""


def limit() -> int:
    return int(settings.MAX_WAITS_PER_AGENT)


class Places:
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
        """Whether ``place`` was free and is now the agent's; ``WaitsUncounted`` when Redis
        cannot be asked."""
        if coordination.shared():
            client = coordination.redis_client()
            try:
                return bool(
                    client.eval(self._TAKE, 1, _key(agent_id), limit(), PLACE_SECONDS, place)
                )
            except redis.RedisError:
                # Not counted, not taken: uncounted waits (polling, without Redis) are
                # what the limit is there to stop.
                logger.warning("a wait of agent %s is refused: Redis failed", agent_id)
                raise WaitsUncounted from None
        with self._lock:
            places = self._local.setdefault(agent_id, set())
            if len(places) >= limit():
                return False
            places.add(place)
            return True

    def keep(self, agent_id: int, place: str) -> None:
        if coordination.shared():
            # A place not kept lapses by itself (PLACE_SECONDS): a Redis blip does not end
            # the wait, which reads the call from the database.
            with contextlib.suppress(redis.RedisError):
                coordination.redis_client().eval(
                    self._KEEP, 1, _key(agent_id), PLACE_SECONDS, place
                )

    def give_back(self, agent_id: int, place: str) -> None:
        if coordination.shared():
            with contextlib.suppress(redis.RedisError):  # it lapses by itself
                coordination.redis_client().zrem(_key(agent_id), place)
            return
        with self._lock:
            self._local.get(agent_id, set()).discard(place)


def _key(agent_id: int) -> str:
    return coordination.key("waits", agent_id)


places = Places()


def new_place() -> str:
    return uuid4().hex


@contextlib.contextmanager
def holding(agent_id: int) -> Iterator[Callable[[], None]]:
    """One of the agent's places for a synchronous wait (``TooManyWaits`` when none is
    free), given back at the end; the wait calls what this yields at each read of its call
    to keep the place."""
    place = new_place()
    if not places.take(agent_id, place):
        raise TooManyWaits
    try:
        yield lambda: places.keep(agent_id, place)
    finally:
        places.give_back(agent_id, place)
