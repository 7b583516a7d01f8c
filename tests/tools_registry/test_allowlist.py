"""An agent calls only the tools on its allowlist, and only while they are enabled."""

from __future__ import annotations

from approvals.models import ToolCall
from tests.conftest import World, events
from tools_registry import services
from tools_registry.models import Tool

DELETE = {
    "tool": "delete_customer",
    "arguments": {"customer_id": "cus_0001", "reason": "Asked to be forgotten."},
    "session_id": "s1",
}


def test_a_tool_outside_the_allowlist_is_refused_with_403(world: World) -> None:
    world.agent.allowed_tools.remove(world.tools["delete_customer"])
    response = world.api().submit(DELETE)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "tool_not_allowed"
    assert error["retryable"] is False
    assert ToolCall.objects.count() == 0
    [refusal] = events("call.refused", outcome="tool_not_allowed")
    assert refusal.tool_name == "delete_customer"


def test_an_allowlist_change_through_the_service_takes_effect_at_once(world: World) -> None:
    api = world.api()
    assert api.submit(DELETE).status_code == 202
    allowed = [t for t in world.agent.allowed_tools.all() if t.name != "delete_customer"]
    services.save_agent(agent=world.agent, allowed_tools=allowed, changed_by=world.alice)
    assert api.submit({**DELETE, "session_id": "s2"}).status_code == 403
    [event] = events("agent.updated")
    assert "delete_customer" in event.data["before"]["allowed_tools"]
    assert "delete_customer" not in event.data["after"]["allowed_tools"]


def test_an_unknown_tool_is_a_404_and_a_disabled_one_a_403(world: World) -> None:
    api = world.api()
    unknown = api.submit({**DELETE, "tool": "format_disk"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_tool")
    services.update_policy(
        tool=world.tools["delete_customer"], changes={"enabled": False}, changed_by=world.alice
    )
    disabled = api.submit(DELETE)
    assert (disabled.status_code, disabled.json()["error"]["code"]) == (403, "tool_disabled")


def test_an_allowed_tool_whose_code_is_gone_is_refused(world: World) -> None:
    Tool.objects.filter(name="delete_customer").update(available=False)
    response = world.api().submit(DELETE)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "tool_disabled")
