"""Rate limits per tool per agent and per tool per end user (``on_behalf_of``).

A tool's policy holds limit strings such as ``"30/minute"`` (several may be joined with
``;``). They are enforced with the ``limits`` library's moving window: at most N admitted
calls in any window of the given length, not N per calendar minute, so a burst at a
minute boundary cannot double the rate. Each check is one atomic Lua script in Redis
(shared by every process) or, in the embedded mode, a lock-protected in-process store. A
refused hit takes nothing from the window.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from approvals import coordination
from tools_registry.models import Agent, Tool

logger = logging.getLogger(__name__)
_memory_lock = threading.Lock()


@dataclass(frozen=True)
class Refusal:
    scope: str  # "agent" | "user"
    limit: str  # the policy string, e.g. "30/minute"
    retry_after: int  # whole seconds until one call fits in the window again


_limiters: dict[str, MovingWindowRateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter() -> MovingWindowRateLimiter:
    """The process's limiter. Created under a lock: two memory stores made by racing first
    requests would each admit N calls."""
    url = settings.REDIS_URL
    with _limiters_lock:
        if url not in _limiters:
            storage: Storage
            if url:
                storage = RedisStorage(
                    url, key_prefix=coordination.key("limits"), socket_connect_timeout=2
                )
            else:
                storage = MemoryStorage()
            _limiters[url] = MovingWindowRateLimiter(storage)
        return _limiters[url]


@lru_cache(maxsize=512)
def parse(policy: str) -> tuple[RateLimitItem, ...]:
    """The limits of a policy string; empty for "" or for a string that does not parse.

    Policy edits are validated by the registry, so a bad string here is a stale row; it is
    logged loudly rather than turning every call of the tool into an error.
    """
    if not policy.strip():
        return ()
    try:
        return tuple(parse_many(policy))
    except ValueError:
        logger.error("rate limit %r does not parse; it is not enforced", policy)
        return ()


def _user_id(on_behalf_of: str) -> str:
    # End users are named by the agent (often an e-mail address): keep them out of Redis.
    return hashlib.sha256(on_behalf_of.strip().lower().encode()).hexdigest()[:24]


def hit(*, tool: Tool, agent: Agent, on_behalf_of: str = "") -> Refusal | None:
    """Take one call from the tool's per-agent and per-user windows; the refusal if full.

    Checked narrowest first (the end user), so a call refused for its user does not use
    up the agent's allowance. Raises ``redis.RedisError`` when Redis is unreachable.
    """
    checks: list[tuple[str, str, tuple[str, ...]]] = []
    if on_behalf_of.strip() and tool.rate_limit_per_user:
        checks.append(
            (
                "user",
                tool.rate_limit_per_user,
                ("tool", str(tool.pk), "user", _user_id(on_behalf_of)),
            )
        )
    if tool.rate_limit_per_agent:
        checks.append(
            ("agent", tool.rate_limit_per_agent, ("tool", str(tool.pk), "agent", str(agent.pk)))
        )
    rate = limiter()
    # Redis runs each hit as one Lua script. The library's memory storage is not safe
    # under concurrent threads (its expiry timer swaps the per-key locks), so the embedded
    # mode takes its hits one at a time.
    with nullcontext() if coordination.shared() else _memory_lock:
        for scope, policy, identifiers in checks:
            for item in parse(policy):
                if not rate.hit(item, *identifiers):
                    return Refusal(
                        scope=scope,
                        limit=policy,
                        retry_after=_retry_after(rate, item, identifiers),
                    )
    return None


def _retry_after(
    rate: MovingWindowRateLimiter, item: RateLimitItem, identifiers: tuple[str, ...]
) -> int:
    """Seconds until the oldest call in the window leaves it (at least 1)."""
    reset_at = rate.get_window_stats(item, *identifiers).reset_time
    return max(1, math.ceil(reset_at - time.time()))
