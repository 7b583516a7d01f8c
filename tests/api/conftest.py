"""Fixtures of the agent API tests: a clean slate in Redis, a controllable test tool, threads."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from gateway import coordination
from tests.conftest import World
from tools_registry import registry
from tools_registry.models import Tool
from tools_registry.policy import Risk, defaults_for
from tools_registry.registry import ToolContext, ToolFailed

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "python"
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))

SEND_EMAIL = {
    "tool": "send_email",
    "arguments": {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."},
    "session_id": "run-1",
    "reasoning": "The customer asked for confirmation.",
}
GET_CUSTOMER = {
    "tool": "get_customer",
    "arguments": {"customer_id": "cus_0002"},
    "session_id": "run-1",
}


def clear_shared_state() -> None:
    """Forget every rate-limit window and breaker of this run's Redis database.

    Only Countersign's own key families are touched (never FLUSHDB: the database may be
    shared with the cache and the broker of this test run).
    """
    client = coordination.redis_client()
    for pattern in (coordination.key("limits") + "*", coordination.key("breaker") + ":*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture(autouse=True)
def _clean_shared_state() -> Iterator[None]:
    clear_shared_state()
    yield
    clear_shared_state()


def in_threads[T](count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``count`` real threads released together; each thread uses its
    own database connection and closes it when done."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        try:
            barrier.wait(timeout=30)
            return work(index)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


@dataclass
class Probe:
    """The test tool's behaviour, switchable while a test runs; thread-safe counters."""

    mode: str = "ok"  # ok | fail | timeout | refuse
    delay: float = 0.0
    fail_first: int = 0  # fail this many calls, whatever the mode, then follow it
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When set, each call waits (at most 10 s) for this event before answering: a test holds
    # the tool busy until everything it races against has been answered.
    hold: threading.Event | None = None

    def run(self, ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.fail_first
        if self.delay:
            time.sleep(self.delay)
        if self.hold is not None:
            self.hold.wait(timeout=10)
        if self.mode == "fail" or failing:
            raise ConnectionError("the inventory service reset the connection")
        if self.mode == "timeout":
            raise TimeoutError("the inventory service did not answer in time")
        if self.mode == "refuse":
            raise ToolFailed("No such item.", code="item_not_found")
        return {"sku": arguments["sku"], "in_stock": 3}


PROBE_SCHEMA = {
    "type": "object",
    "properties": {"sku": {"type": "string", "description": "Item.", "maxLength": 20}},
    "required": ["sku"],
    "additionalProperties": False,
}


def install_probe_tool(world: World, *, risk: str = Risk.READ, **policy: Any) -> Probe:
    """Register ``check_stock`` (a read by default) in code and in the database, allowed to
    the world's agent, with ``policy`` overriding its risk class's defaults."""
    probe = Probe()
    spec = registry.tool(
        name="check_stock",
        description="Look up the stock of one item. Read only: changes nothing.",
        input_schema=PROBE_SCHEMA,
        risk=risk,
    )(probe.run)
    fields = {**defaults_for(risk).as_fields(), "max_attempts": 1, **policy}
    tool = Tool.objects.create(
        name=spec.name,
        description=spec.description,
        input_schema=spec.input_schema,
        risk=risk,
        version=spec.version,
        **fields,
    )
    world.agent.allowed_tools.add(tool)
    world.tools[tool.name] = tool
    return probe


@pytest.fixture
def probe_tool_cleanup() -> Iterator[None]:
    yield
    registry.unregister("check_stock")


def stock_call(sku: str = "sku-1", **extra: Any) -> dict[str, Any]:
    return {"tool": "check_stock", "arguments": {"sku": sku}, "session_id": "run-1", **extra}


def redis_url() -> str:
    return settings.REDIS_URL
