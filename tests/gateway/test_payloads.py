"""What the doors make of an agent's JSON: the arguments validated, hashed for approval,
shown and run are the arguments as PostgreSQL keeps them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from approvals.guards import arguments_hash
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from tests.conftest import World
from tools_registry import services as registry_services
from tools_registry.models import Tool
from tools_registry.policy import Risk, defaults_for

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

QUOTE_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number", "description": "How much."}},
    "required": ["amount"],
    "additionalProperties": False,
}


def quote_tool(world: World) -> Tool:
    """A write taking any number, as an imported HTTP API's often does (no maximum)."""
    tool = Tool.objects.create(
        name="send_quote",
        description="Send the customer a quote.",
        input_schema=QUOTE_SCHEMA,
        risk=Risk.WRITE,
        version="1",
        **defaults_for(Risk.WRITE).as_fields(),
    )
    world.agent.allowed_tools.add(tool)
    registry_services.grant_review(tool=tool, user=world.bob)
    return tool


def assert_decided(world: World, amount: float, verdict: str) -> None:
    """A quote for ``amount`` sent by the agent, bound to the arguments as stored, and
    decided by a reviewer's ``verdict``."""
    quote_tool(world)
    response = world.api().submit(
        {"tool": "send_quote", "arguments": {"amount": amount}, "session_id": "run-1"}
    )
    assert response.status_code == 202, response.content
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert call.arguments_hash == arguments_hash(
        tool_name="send_quote", tool_version="1", arguments=call.arguments
    )
    decide(call_id=call.pk, reviewer=world.bob, verdict=verdict, comment="Checked.")
    call.refresh_from_db()
    assert call.status == (Status.APPROVED if verdict == "approve" else Status.REJECTED)


@pytest.mark.parametrize("verdict", ["approve", "reject"])
@pytest.mark.parametrize("amount", [1e16, 1.5e16, -2.5e20, 1e300])
def test_a_float_written_with_an_exponent_can_still_be_decided(
    world: World, amount: float, verdict: str
) -> None:
    """Python writes such a float with an exponent (1e+16); jsonb keeps it as a number and
    gives back a whole number (10000000000000000). The approval binds to the arguments'
    hash: taken of the float as sent, it never matched the stored call again, and every
    reviewer's verdict was refused as tampering, the call left waiting until it expired."""
    assert_decided(world, amount, verdict)


def test_a_correction_written_with_an_exponent_can_still_be_approved(world: World) -> None:
    """The same for a reviewer's correction: its hash was taken of the float as typed, and
    the second reviewer's approval of the corrected call was refused as tampering."""
    tool = quote_tool(world)
    tool.approvals_required = 2
    tool.save()
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave")
    registry_services.grant_review(tool=tool, user=dave)
    response = world.api().submit(
        {"tool": "send_quote", "arguments": {"amount": 12.5}, "session_id": "run-1"}
    )
    call_id = response.json()["id"]
    decide(
        call_id=call_id, reviewer=world.bob, verdict="approve", edited_arguments={"amount": 1e16}
    )
    call = ToolCall.objects.get(pk=call_id)
    assert call.arguments == {"amount": 10**16}
    assert call.arguments_hash == arguments_hash(
        tool_name="send_quote", tool_version="1", arguments=call.arguments
    )
    assert decide(call_id=call_id, reviewer=dave, verdict="approve").decided


@pytest.mark.parametrize("verdict", ["approve", "reject"])
def test_a_negative_zero_can_still_be_decided(world: World, verdict: str) -> None:
    """jsonb keeps a number as a decimal, which has no negative zero: -0.0 (a longitude on
    the meridian, a nil adjustment) comes back 0.0. Hashed as sent, the approval never
    matched the stored call, and every verdict was refused as tampering."""
    assert_decided(world, -0.0, verdict)
