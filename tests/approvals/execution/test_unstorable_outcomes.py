"""What a tool answers is kept whatever it holds. PostgreSQL's jsonb refuses NUL, unpaired
surrogates and numbers that are not finite; a tool (an upstream, most likely) may send them
after its effect happened. The outcome is stored with them replaced, never lost."""

from __future__ import annotations

import pytest

from approvals.execution import runner
from approvals.models import Status, ToolCall
from approvals.services.calls import create_call
from approvals.services.decisions import decide
from tests.conftest import World
from tests.support.probe import install_probe_tool, stock_call
from tools_registry import services as registry_services
from tools_registry.policy import Risk

pytestmark = pytest.mark.usefixtures("probe_tool_cleanup")

KEPT = {"sku": "sku-1", "note\ufffd": "a\ufffdb\ufffdc", "ratio": None}


def test_a_read_answers_and_replays_what_it_can_keep(world: World) -> None:
    probe = install_probe_tool(world)
    probe.mode = "garbled"
    api = world.api()
    first = api.submit(stock_call(), key="garbled-read")
    assert first.status_code == 200, first.content
    assert first.json()["result"] == KEPT
    replay = api.submit(stock_call(), key="garbled-read")
    assert replay.status_code == 200 and replay.json() == first.json()
    assert ToolCall.objects.get(request_key="garbled-read").status == Status.SUCCEEDED


def test_a_write_that_took_effect_is_stored_as_succeeded(world: World) -> None:
    probe = install_probe_tool(world, risk=Risk.WRITE, approvals_required=1)
    probe.mode = "garbled"
    call = create_call(
        agent=world.agent,
        tool=world.tools["check_stock"],
        arguments={"sku": "sku-1"},
        session_id="s",
        request_key="garbled-write",
    )
    registry_services.grant_review(tool=world.tools["check_stock"], user=world.bob)
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve")
    outcome = runner.execute(call.pk)
    assert outcome is not None and outcome.status == Status.SUCCEEDED
    call.refresh_from_db()
    assert (call.status, call.result) == (Status.SUCCEEDED, KEPT)
    assert probe.calls == 1
