"""The controllable test tool: ``check_stock``, a read by default, registered in code and
in the database, whose behaviour a test switches while it runs (fail, time out, refuse,
hold)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import World
from tools_registry import registry
from tools_registry.models import Tool
from tools_registry.policy import Risk, defaults_for
from tools_registry.registry import ToolContext, ToolFailed


@dataclass
class Probe:
    """The test tool's behaviour, switchable while a test runs; thread-safe counters."""

    # ok | fail | timeout | refuse | busy (a retryable refusal) | garbled (what jsonb cannot hold)
    mode: str = "ok"
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
        if self.mode == "busy":
            raise ToolFailed(
                "The key's first request is still running.", code="upstream_409", retryable=True
            )
        if self.mode == "garbled":
            return {"sku": arguments["sku"], "note\x00": "a\x00b\ud800c", "ratio": float("nan")}
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


def stock_call(sku: str = "sku-1", **extra: Any) -> dict[str, Any]:
    return {"tool": "check_stock", "arguments": {"sku": sku}, "session_id": "run-1", **extra}
