"""Rate limits per tool per agent and per tool per end user (``on_behalf_of``).

A tool's policy holds one limit string each, such as ``"30/minute"`` (the registry refuses
several joined with ``;``; one stored before that is still enforced whole). They are
enforced as moving windows: at most N admitted calls in any window of the
given length, not N per calendar minute, so a burst at a minute boundary cannot double the
rate. A call is admitted only if every one of its windows has room, and only then takes
one from each: a call refused by one window (the agent's) takes nothing from any other
(its end user's). A refusal names the full window that frees last: its Retry-After is
when the call fits in every window again, not when the first one has room. In Redis
(shared by every process) the check and the take are one Lua script, so the limits stay
exact under any concurrency; the embedded mode does the same with the ``limits``
library's in-process store under a lock.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from gateway import coordination
from tools_registry.models import Agent, Tool
from tools_registry.role_scopes import folded

logger = logging.getLogger(__name__)
_memory_lock = threading.Lock()


@dataclass(frozen=True)
class Refusal:
    scope: str  # "agent" | "user"
    limit: str  # the policy string, e.g. "30/minute"
    retry_after: int  # whole seconds until one call fits in the window again


# KEYS: one list per window, newest entry first (the layout of the ``limits`` library's
# moving window). ARGV: each window's limit and length in seconds, in KEYS order.
# Timed by the Redis server's clock, so the web processes' clocks do not matter.
# Returns 0 when the call was taken from every window, else {the 1-based index of the
# full window that frees last, seconds until it has room}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local full, wait = 0, 0
for i, key in ipairs(KEYS) do
  local limit, expiry = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local left = 0
  if limit < 1 then
    left = expiry
  else
    local oldest = redis.call('LINDEX', key, limit - 1)
    if oldest and tonumber(oldest) > now - expiry then left = tonumber(oldest) + expiry - now end
  end
  if left > wait then full, wait = i, left end
end
if full > 0 then return {full, tostring(wait)} end
local stamp = string.format('%.6f', now)
for i, key in ipairs(KEYS) do
  local limit, expiry = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('LPUSH', key, stamp)
  redis.call('LTRIM', key, 0, limit - 1)
  redis.call('EXPIRE', key, expiry)
end
return 0
"""

_scripts: dict[str, Any] = {}
_memory_rate: MovingWindowRateLimiter | None = None
_setup_lock = threading.Lock()


def _take_script() -> Any:
    url = settings.REDIS_URL
    with _setup_lock:
        if url not in _scripts:
            _scripts[url] = coordination.redis_client().register_script(_TAKE)
        return _scripts[url]


def _memory_limiter() -> MovingWindowRateLimiter:
    """The embedded mode's limiter. Created under a lock: two memory stores made by racing
    first requests would each admit N calls."""
    global _memory_rate
    with _setup_lock:
        if _memory_rate is None:
            _memory_rate = MovingWindowRateLimiter(MemoryStorage())
        return _memory_rate


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
    # One person however written, as separation of duties takes them.
    return hashlib.sha256(folded(on_behalf_of).encode()).hexdigest()[:24]


def hit(*, tool: Tool, agent: Agent, on_behalf_of: str = "") -> Refusal | None:
    """Take one call from each of the tool's per-user and per-agent windows, or from none:
    the refusal of the full window that frees last (the end user's, of two that free
    together).

    Raises ``redis.RedisError`` when Redis is unreachable.
    """
    windows: list[tuple[str, str, RateLimitItem, tuple[str, ...]]] = []
    if on_behalf_of.strip() and tool.rate_limit_per_user:
        user = ("tool", str(tool.pk), "user", _user_id(on_behalf_of))
        for item in parse(tool.rate_limit_per_user):
            windows.append(("user", tool.rate_limit_per_user, item, user))
    if tool.rate_limit_per_agent:
        own = ("tool", str(tool.pk), "agent", str(agent.pk))
        for item in parse(tool.rate_limit_per_agent):
            windows.append(("agent", tool.rate_limit_per_agent, item, own))
    if not windows:
        return None
    if coordination.shared():
        return _take_in_redis(windows)
    return _take_in_memory(windows)


def _take_in_redis(
    windows: list[tuple[str, str, RateLimitItem, tuple[str, ...]]],
) -> Refusal | None:
    prefix = coordination.key("limits")
    keys = [f"{prefix}:{item.key_for(*ids)}" for _, _, item, ids in windows]
    args: list[int] = []
    for _, _, item, _ in windows:
        args += [item.amount, item.get_expiry()]
    result = _take_script()(keys=keys, args=args)
    if not result:
        return None
    index, wait = int(result[0]) - 1, float(result[1])
    scope, policy, _, _ = windows[index]
    return Refusal(scope=scope, limit=policy, retry_after=max(1, math.ceil(wait)))


def _take_in_memory(
    windows: list[tuple[str, str, RateLimitItem, tuple[str, ...]]],
) -> Refusal | None:
    rate = _memory_limiter()
    # The library's memory storage is not safe under concurrent threads (its expiry timer
    # swaps the per-key locks), and test-then-hit must not interleave: one at a time.
    with _memory_lock:
        full = [
            (rate.get_window_stats(item, *ids).reset_time, scope, policy)
            for scope, policy, item, ids in windows
            if not rate.test(item, *ids)
        ]
        if full:
            # The window that frees last (the first of those that free together).
            reset_at, scope, policy = max(full, key=lambda window: window[0])
            return Refusal(
                scope=scope, limit=policy, retry_after=max(1, math.ceil(reset_at - time.time()))
            )
        for _, _, item, ids in windows:
            rate.hit(item, *ids)
    return None
