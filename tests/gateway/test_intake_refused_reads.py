"""A read whose tool (or agent) is switched off between intake and its claim never runs:
the agent gets the reason as a non-retryable error, the key replays it, and a half-open
breaker's probe slot it held is handed back at once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from approvals.models import Status, ToolCall
from gateway import intake
from tests.conftest import World
from tests.support.probe import Probe, install_probe_tool, stock_call
from tools_registry.models import Agent, Tool


def _switched_off_after_intake(monkeypatch: pytest.MonkeyPatch, switch_off: Any) -> None:
    """An admin's change lands right after intake accepted the call, before it is claimed."""
    create = intake._create

    def create_then_switch_off(*args: Any, **kwargs: Any) -> ToolCall:
        call = create(*args, **kwargs)
        switch_off()
        return call

    monkeypatch.setattr(intake, "_create", create_then_switch_off)


@pytest.mark.parametrize(
    ("switch_off", "status", "code"),
    [
        (
            lambda: Tool.objects.filter(name="check_stock").update(enabled=False),
            403,
            "tool_disabled",
        ),
        (lambda: Agent.objects.update(enabled=False), 403, "agent_disabled"),
        (
            lambda: Tool.objects.filter(name="check_stock").update(version="v-next"),
            409,
            "tool_version_changed",
        ),
    ],
)
def test_the_agent_is_told_why_and_the_tool_never_runs(
    world: World,
    probe_tool_cleanup: None,
    monkeypatch: pytest.MonkeyPatch,
    switch_off: Any,
    status: int,
    code: str,
) -> None:
    probe = install_probe_tool(world)
    with monkeypatch.context() as patch:
        _switched_off_after_intake(patch, switch_off)
        response = world.api().submit(stock_call(), key="k-1")
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["code"], error["retryable"]) == (code, False)
    assert probe.calls == 0
    assert ToolCall.objects.get(request_key="k-1").status == Status.FAILED

    Tool.objects.filter(name="check_stock").update(
        enabled=True, version=world.tools["check_stock"].version
    )
    Agent.objects.update(enabled=True)
    replay = world.api().submit(stock_call(), key="k-1")
    assert (replay.status_code, replay.json()) == (status, response.json())


def test_a_refused_probe_hands_the_half_open_slot_back(
    world: World, probe_tool_cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe: Probe = install_probe_tool(world, breaker_threshold=1, breaker_cooldown_seconds=1)
    probe.mode = "fail"
    assert world.api().submit(stock_call()).status_code == 502
    assert world.api().submit(stock_call()).status_code == 503, "open"
    time.sleep(1.1)

    with monkeypatch.context() as patch:
        _switched_off_after_intake(
            patch, lambda: Tool.objects.filter(name="check_stock").update(enabled=False)
        )
        assert world.api().submit(stock_call()).status_code == 403, "the probe was refused"
    Tool.objects.filter(name="check_stock").update(enabled=True)

    probe.mode = "ok"
    calls_before = probe.calls
    assert world.api().submit(stock_call()).status_code == 200, "the next call is the probe"
    assert probe.calls == calls_before + 1
