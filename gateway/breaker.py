"""A circuit breaker per tool, shared by every web and worker process.

closed     calls pass; each execution that ends in a timeout, a handler error, an
           upstream that could not be reached or an unknown outcome counts one failure,
           any other outcome resets the count.
open       ``breaker_threshold`` consecutive failures open it: calls are refused with 503
           ``circuit_open`` for ``breaker_cooldown_seconds``.
half-open  after the cool-down exactly one call is let through as the probe (a token with
           a lease, so a probe whose process died frees the slot); every other call that
           would run now is refused until the probe's outcome is known (a write that waits
           for a person runs later, if at all: it is accepted, ``check``). Success closes
           the breaker, failure opens it for another cool-down.

A tool that answers "no" (``ToolFailed``: customer not found, refund refused) is working,
so such an outcome counts as a success. In services mode the state is three Redis keys per
tool, changed only by Lua scripts (atomic, timed by the Redis server's clock so that the
processes' clocks do not matter); the embedded mode keeps it in memory under a lock.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction

from approvals import hooks
from approvals.models import Status, ToolCall
from audit.log import record
from gateway import coordination
from tools_registry.models import Tool
from tools_registry.policy import handler_budget_seconds

logger = logging.getLogger(__name__)

# Seconds a half-open probe may take beyond the tool's own timeout and retries.
PROBE_GRACE_SECONDS = 5
# An HTTP upstream nobody could connect to fails its call unsent (``upstream_unreachable``,
# so that the call is not left to reconciliation), but no tool answered: it is down, not
# saying "no". Counted as a success, it would keep a dead upstream's breaker closed, and
# close it again with every probe.
# A read whose worker went silent past its lease (``lease_expired``) failed without an
# answer either.
FAILURE_CODES = frozenset({"timeout", "handler_error", "upstream_unreachable", "lease_expired"})

# admit() decisions
REFUSED, CLOSED, PROBE, PROBING = 0, 1, 2, 3

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: open_until, probe. ARGV: probe lease (ms), probe token.
# Returns {decision, retry_after_ms}: 1 closed, 0 open, 2 this call probes, 3 another probes.
_ADMIT = (
    _NOW_MS
    + """
local open_until = tonumber(redis.call('GET', KEYS[1]) or '0')
if open_until == 0 then return {1, 0} end
if now < open_until then return {0, open_until - now} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[1]) then return {2, 0} end
return {3, redis.call('PTTL', KEYS[2])}
"""
)

# KEYS: open_until. Returns the ms left of a cool-down under way, else 0 (closed or
# half-open: nothing is taken).
_CHECK = (
    _NOW_MS
    + """
local open_until = tonumber(redis.call('GET', KEYS[1]) or '0')
if now < open_until then return open_until - now end
return 0
"""
)

# KEYS: failures, open_until, probe. ARGV: threshold, cool-down (ms).
_FAILURE = (
    _NOW_MS
    + """
local open_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if open_until > 0 then
  if now < open_until then return 'open' end
  redis.call('SET', KEYS[2], now + tonumber(ARGV[2]))
  redis.call('DEL', KEYS[3])
  return 'reopened'
end
local failures = redis.call('INCR', KEYS[1])
if tonumber(ARGV[1]) > 0 and failures >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], now + tonumber(ARGV[2]))
  redis.call('DEL', KEYS[1], KEYS[3])
  return 'opened'
end
return 'counted'
"""
)

# KEYS: failures, open_until, probe. Returns 1 when the breaker was open or half-open.
_SUCCESS = """
local was_open = redis.call('EXISTS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return was_open
"""

# KEYS: probe. ARGV: token. Frees the probe slot if this request still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Admission:
    """A call the breaker let through; ``probe_token`` is set for the half-open probe."""

    tool_name: str
    probe_token: str = ""


class CircuitOpen(Exception):
    def __init__(self, tool_name: str, retry_after: int):
        super().__init__(f"circuit of {tool_name} is open")
        self.tool_name = tool_name
        self.retry_after = retry_after


def _keys(tool_name: str) -> tuple[str, str, str]:
    return (
        coordination.key("breaker", tool_name, "failures"),
        coordination.key("breaker", tool_name, "open_until"),
        coordination.key("breaker", tool_name, "probe"),
    )


def _probe_lease_seconds(tool: Tool) -> float:
    budget = handler_budget_seconds(
        timeout_seconds=tool.timeout_seconds, max_attempts=tool.max_attempts
    )
    return budget + PROBE_GRACE_SECONDS


def admit(tool: Tool, *, for_call: UUID | None = None) -> Admission:
    """Let a call of ``tool`` through, or raise ``CircuitOpen`` with the seconds to wait.

    ``for_call``: the call that will run later, in a worker (a write approved as it arrived,
    a retry). Its probe slot is then named after it, so that its claim, should it refuse to
    run the call (the tool switched off meanwhile), gives the slot back (``unrun``)."""
    token = str(for_call) if for_call is not None else secrets.token_hex(8)
    lease_ms = int(_probe_lease_seconds(tool) * 1000)
    decision, retry_ms = _store().admit(tool.name, lease_ms=lease_ms, token=token)
    if decision == CLOSED:
        return Admission(tool_name=tool.name)
    if decision == PROBE:
        logger.info("breaker of %s is half-open; this call is the probe", tool.name)
        return Admission(tool_name=tool.name, probe_token=token)
    if decision == PROBING:
        # The probe usually answers well within its lease; come back after one timeout.
        retry_ms = min(retry_ms, int(max(tool.timeout_seconds, 1) * 1000))
    raise CircuitOpen(tool.name, retry_after=max(1, math.ceil(retry_ms / 1000)))


def check(tool: Tool) -> None:
    """Raise ``CircuitOpen`` while the tool's cool-down runs; take nothing otherwise. For a
    call that will not run now (a write that waits for a person): it is refused while the
    tool is known to be down, but needs no probe slot, and must not hold one for the
    moments its transaction takes (a call of the tool arriving then was refused, told to
    wait a timeout, though nothing ran)."""
    retry_ms = _store().check(tool.name)
    if retry_ms > 0:
        raise CircuitOpen(tool.name, retry_after=max(1, math.ceil(retry_ms / 1000)))


def release(admission: Admission | None) -> None:
    """Give the probe slot back when the admitted call was refused for another reason.

    Never raises: it runs where a request is already failing or being refused (Redis gone
    between the admission and here, say), whose own answer must not turn into a 500. A
    slot not given back is freed when its lease ends."""
    if admission is None or not admission.probe_token:
        return
    try:
        _store().release(admission.tool_name, token=admission.probe_token)
    except Exception:
        logger.exception(
            "breaker of %s: the probe slot could not be given back; freed at its lease's end",
            admission.tool_name,
        )


def unrun(call: ToolCall, previous: str | None) -> None:
    """An ``approvals.hooks.on_status_changed`` receiver: an approved call that fails (or is
    left to a person) without running was refused by its claim (its tool or agent switched
    off, the tool's definition changed, the agent stopped). No outcome will free a probe slot
    it took (``admit``'s ``for_call``), and every call of the tool would be refused until the
    slot's lease ends: it is given back once that commits. A slot it does not hold is left
    alone (``release`` asks for its name)."""
    if previous != Status.APPROVED or call.status not in (Status.FAILED, Status.UNKNOWN):
        return
    admission = Admission(tool_name=call.tool.name, probe_token=str(call.pk))
    transaction.on_commit(lambda: release(admission))


def record_outcome(*, tool_name: str, status: str, error: dict[str, Any] | None) -> str:
    """Feed one execution's outcome to the tool's breaker; returns what changed."""
    failed = status == "unknown" or (
        status == "failed" and (error or {}).get("code") in FAILURE_CODES
    )
    store = _store()
    if not failed:
        if store.success(tool_name):
            logger.info("breaker of %s closed", tool_name)
            _audit(tool_name, "tool.breaker_closed", {})
            return "closed"
        return "ok"
    tool = Tool.objects.filter(name=tool_name).first()
    if tool is None:
        return "ok"
    change = store.failure(
        tool_name,
        threshold=tool.breaker_threshold,
        cooldown_ms=int(tool.breaker_cooldown_seconds * 1000),
    )
    if change in ("opened", "reopened"):
        logger.warning(
            "breaker of %s %s for %s s", tool_name, change, tool.breaker_cooldown_seconds
        )
        _audit(
            tool_name,
            "tool.breaker_opened",
            {
                "after_probe": change == "reopened",
                "cooldown_seconds": tool.breaker_cooldown_seconds,
            },
            tool=tool,
        )
    return change


def reset(tool_name: str) -> None:
    """Close the breaker without a trace (the tests' clean slate)."""
    _store().success(tool_name)


def close_by_operator(tool: Tool, *, reason: str) -> bool:
    """An operator closes the tool's breaker before its cool-down ends (the downstream is
    known to be healthy again); audited with the reason. Returns whether it was open."""
    was_open = bool(_store().success(tool.name))
    logger.info("breaker of %s closed by an operator", tool.name)
    _audit(
        tool.name,
        "tool.breaker_closed",
        {"by_operator": True, "reason": reason, "was_open": was_open},
        tool=tool,
    )
    return was_open


def _audit(tool_name: str, action: str, data: dict[str, Any], tool: Tool | None = None) -> None:
    tool = tool or Tool.objects.filter(name=tool_name).first()
    record(action=action, outcome=action.rsplit("_", 1)[-1], tool=tool, data=data)


class _RedisStore:
    def __init__(self) -> None:
        client = coordination.redis_client()
        self._admit = client.register_script(_ADMIT)
        self._check = client.register_script(_CHECK)
        self._failure = client.register_script(_FAILURE)
        self._success = client.register_script(_SUCCESS)
        self._release = client.register_script(_RELEASE)

    def admit(self, tool_name: str, *, lease_ms: int, token: str) -> tuple[int, int]:
        _, open_until, probe = _keys(tool_name)
        decision, retry_ms = self._admit(keys=[open_until, probe], args=[lease_ms, token])
        return int(decision), int(retry_ms)

    def check(self, tool_name: str) -> int:
        return int(self._check(keys=[_keys(tool_name)[1]]))

    def release(self, tool_name: str, *, token: str) -> None:
        self._release(keys=[_keys(tool_name)[2]], args=[token])

    def failure(self, tool_name: str, *, threshold: int, cooldown_ms: int) -> str:
        result = self._failure(keys=list(_keys(tool_name)), args=[threshold, cooldown_ms])
        return result.decode() if isinstance(result, bytes) else str(result)

    def success(self, tool_name: str) -> bool:
        return bool(self._success(keys=list(_keys(tool_name))))


@dataclass
class _ToolState:
    failures: int = 0
    open_until: float = 0.0  # monotonic seconds; 0 means closed
    probe_token: str = ""
    probe_until: float = 0.0


@dataclass
class _MemoryStore:
    """The embedded mode's breakers: one process, so a lock makes each change atomic."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    tools: dict[str, _ToolState] = field(default_factory=dict)

    def admit(self, tool_name: str, *, lease_ms: int, token: str) -> tuple[int, int]:
        with self.lock:
            state = self.tools.setdefault(tool_name, _ToolState())
            now = time.monotonic()
            if not state.open_until:
                return CLOSED, 0
            if now < state.open_until:
                return REFUSED, int((state.open_until - now) * 1000)
            if state.probe_token and now < state.probe_until:
                return PROBING, int((state.probe_until - now) * 1000)
            state.probe_token, state.probe_until = token, now + lease_ms / 1000
            return PROBE, 0

    def check(self, tool_name: str) -> int:
        with self.lock:
            state = self.tools.get(tool_name)
            now = time.monotonic()
            if state is None or now >= state.open_until:
                return 0
            return int((state.open_until - now) * 1000)

    def release(self, tool_name: str, *, token: str) -> None:
        with self.lock:
            state = self.tools.get(tool_name)
            if state and state.probe_token == token:
                state.probe_token, state.probe_until = "", 0.0

    def failure(self, tool_name: str, *, threshold: int, cooldown_ms: int) -> str:
        with self.lock:
            state = self.tools.setdefault(tool_name, _ToolState())
            now = time.monotonic()
            if state.open_until:
                if now < state.open_until:
                    return "open"
                state.open_until, state.probe_token = now + cooldown_ms / 1000, ""
                return "reopened"
            state.failures += 1
            if threshold > 0 and state.failures >= threshold:
                state.failures, state.open_until = 0, now + cooldown_ms / 1000
                return "opened"
            return "counted"

    def success(self, tool_name: str) -> bool:
        with self.lock:
            state = self.tools.pop(tool_name, None)
            return bool(state and state.open_until)


_stores: dict[str, _RedisStore | _MemoryStore] = {}
_stores_lock = threading.Lock()


def _store() -> _RedisStore | _MemoryStore:
    url = settings.REDIS_URL
    with _stores_lock:
        if url not in _stores:
            _stores[url] = _RedisStore() if url else _MemoryStore()
        return _stores[url]


def observe(tool_name: str, status: str, error: dict[str, Any] | None, found_by: str) -> None:
    """The executor's hook (``approvals.hooks.on_execution_finished``): feed an execution's
    outcome to the breaker, never raising (a Redis blip must not turn a stored result into
    a failed task). Each execution counts once: in Redis as its worker or the lease sweep
    found its end; in the embedded mode's memory, which the sweeps' own process does not
    share (there it would "open", audited, and refuse nothing), as its worker did, late or
    not."""
    shared = isinstance(_store(), _RedisStore)
    if found_by == (hooks.LATE if shared else hooks.SWEEP):
        return
    try:
        record_outcome(tool_name=tool_name, status=status, error=error)
    except Exception:
        logger.exception("breaker of %s could not record an outcome", tool_name)
