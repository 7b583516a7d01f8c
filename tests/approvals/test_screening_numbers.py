"""A whole number past 64 bits in a call's arguments (JSON allows any; an imported API's
integer often has no maximum): policy rules cannot read it, so the call waits for a
reviewer with its rules failed closed, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from approvals.models import Status, ToolCall
from tests.conftest import World
from tools_registry import registry
from tools_registry import services as registry_services
from tools_registry.models import Tool
from tools_registry.policy import Risk, defaults_for

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "maxLength": 20},
        "quantity": {"type": "integer", "minimum": 1},
    },
    "required": ["sku", "quantity"],
    "additionalProperties": False,
}


def code_tool(world: World, name: str, description: str, schema: Any, risk: str) -> Tool:
    """A tool declared in code (a handler that does nothing) and its row, with its risk
    class's defaults, allowed to the world's agent; ``registry.unregister`` it after."""
    spec = registry.tool(name=name, description=description, input_schema=schema, risk=risk)(
        lambda ctx, arguments: {"ok": True}
    )
    tool = Tool.objects.create(
        name=spec.name,
        description=spec.description,
        input_schema=spec.input_schema,
        risk=risk,
        version=spec.version,
        **defaults_for(risk).as_fields(),
    )
    world.agent.allowed_tools.add(tool)
    return tool


@pytest.fixture
def order_tool(world: World) -> Iterator[Tool]:
    yield code_tool(
        world,
        "place_order",
        "Order stock from the supplier. Side effect: the order is placed.",
        ORDER_SCHEMA,
        Risk.WRITE,
    )
    registry.unregister("place_order")


def order(quantity: Any) -> dict[str, Any]:
    return {
        "tool": "place_order",
        "session_id": "s-order",
        "arguments": {"sku": "sku-1", "quantity": quantity},
    }


@pytest.mark.parametrize("with_rules", [True, False])
def test_a_number_past_64_bits_waits_for_a_reviewer_not_a_500(
    world: World, order_tool: Tool, with_rules: bool
) -> None:
    if with_rules:
        registry_services.update_policy(
            tool=order_tool,
            changes={"rules": [{"when": "args.quantity <= 10", "then": "approve"}]},
            changed_by=world.alice,
        )
    response = world.api().submit(order(2**63))
    assert response.status_code == 202, response.content[:300]
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert call.status == Status.PENDING
    assert call.arguments["quantity"] == 2**63
    reviewer = Client()
    reviewer.force_login(world.bob)
    registry_services.grant_review(tool=order_tool, user=world.bob)
    page = reviewer.get(f"/approvals/{call.pk}/")
    assert page.status_code == 200 and str(2**63) in page.content.decode()


NULLABLE_SCHEMA = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "maxLength": 20},
        # An imported API's optional list is often nullable: its rules are checked on a
        # sample that is a list, and a live call may send null.
        "notify": {"type": ["array", "null"], "items": {"type": "string"}},
    },
    "required": ["sku"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("risk", [Risk.WRITE, Risk.READ])
def test_a_rule_over_a_list_the_call_sends_as_null_fails_closed_not_a_500(
    world: World, risk: str
) -> None:
    tool = code_tool(
        world,
        "notify_stock",
        "Tell people about stock. Side effect: messages are sent.",
        NULLABLE_SCHEMA,
        risk,
    )
    try:
        rule = 'args.notify.exists(n, !n.endsWith("@example.com"))'
        rules = [{"when": rule, "then": "refuse", "note": "Outsiders hear nothing."}]
        if risk == Risk.WRITE:
            rules = [
                {"when": rule, "then": "require", "approvals": 2},
                {"when": "true", "then": "approve"},
            ]
        registry_services.update_policy(tool=tool, changes={"rules": rules}, changed_by=world.alice)
        response = world.api().submit(
            {
                "tool": "notify_stock",
                "session_id": "s-null",
                "arguments": {"sku": "sku-1", "notify": None},
            }
        )
        if risk == Risk.READ:
            # It might refuse, and a read cannot wait for a reviewer.
            assert response.status_code == 403, response.content[:300]
            assert response.json()["error"]["code"] == "refused_by_policy"
            return
        assert response.status_code == 202, response.content[:300]
        call = ToolCall.objects.get(pk=response.json()["id"])
        assert call.status == Status.PENDING and call.approvals_required == 2
        assert call.policy["rule"]["errors"] == [
            "rule 1: the condition could not be evaluated on this call"
        ]
    finally:
        registry.unregister("notify_stock")


@pytest.mark.parametrize(
    "weight",
    [{"type": ["number", "null"]}, {"anyOf": [{"type": "number"}, {"type": "null"}]}],
)
def test_a_nullable_number_sent_whole_is_read_as_the_number_it_is(
    world: World, weight: dict[str, Any]
) -> None:
    """An argument the schema calls a number is a double to the rules, written ``0`` or
    ``0.0``; an optional one (a number or a null, as imported APIs and pydantic write it)
    stayed an int, so ``args.weight == 0.0``, accepted when saved, failed on every call that
    sent ``0``: the rule never approved, and one that refuses refused every read."""
    schema = {
        "type": "object",
        "properties": {"sku": {"type": "string", "maxLength": 20}, "weight": weight},
        "required": ["sku"],
        "additionalProperties": False,
    }
    tool = code_tool(
        world, "ship_sample", "Ship a sample. Side effect: a parcel is sent.", schema, Risk.WRITE
    )
    try:
        registry_services.update_policy(
            tool=tool,
            changes={"rules": [{"when": "args.weight == 0.0", "then": "approve"}]},
            changed_by=world.alice,
        )
        for sent in (0, 0.0):
            response = world.api().submit(
                {
                    "tool": "ship_sample",
                    "session_id": "s-weight",
                    "arguments": {"sku": "sku-1", "weight": sent},
                }
            )
            assert response.status_code == 202, response.content[:300]
            call = ToolCall.objects.get(pk=response.json()["id"])
            assert call.status == Status.APPROVED, call.policy
    finally:
        registry.unregister("ship_sample")


def test_a_rule_reads_a_nested_model_its_schema_names_by_reference(world: World) -> None:
    """An MCP server's schema keeps its ``$ref``s (``#/$defs/Money`` for a nested model):
    the check on saving sampled such a field as a string, so every rule reading into it was
    refused ("the condition cannot be evaluated"), and the calls read its numbers as ints."""
    schema = {
        "type": "object",
        "$defs": {
            "Money": {
                "type": "object",
                "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}},
                "required": ["amount", "currency"],
            }
        },
        "properties": {
            "sku": {"type": "string", "maxLength": 20},
            "price": {"$ref": "#/$defs/Money"},
        },
        "required": ["sku", "price"],
        "additionalProperties": False,
    }
    tool = code_tool(
        world, "buy_sample", "Buy a sample. Side effect: it is paid for.", schema, Risk.WRITE
    )
    try:
        rule = 'args.price.currency == "usd" && args.price.amount <= 10.0'
        registry_services.update_policy(
            tool=tool,
            changes={"rules": [{"when": rule, "then": "approve"}]},
            changed_by=world.alice,
        )
        for amount, status in ((5, Status.APPROVED), (5.5, Status.APPROVED), (50, Status.PENDING)):
            response = world.api().submit(
                {
                    "tool": "buy_sample",
                    "session_id": "s-price",
                    "arguments": {"sku": "sku-1", "price": {"amount": amount, "currency": "usd"}},
                }
            )
            assert response.status_code == 202, response.content[:300]
            call = ToolCall.objects.get(pk=response.json()["id"])
            assert call.status == status, call.policy
            assert not (call.policy["rule"] or {}).get("errors"), call.policy
    finally:
        registry.unregister("buy_sample")


ACCOUNT_SCHEMA = {
    "type": "object",
    "properties": {"account_id": {"type": "integer", "minimum": 1}},
    "required": ["account_id"],
    "additionalProperties": False,
}


@pytest.fixture
def close_account(world: World) -> Iterator[Tool]:
    tool = code_tool(
        world,
        "close_account",
        "Close a customer account. Side effect: the account is closed.",
        ACCOUNT_SCHEMA,
        Risk.WRITE,
    )
    registry_services.update_policy(
        tool=tool,
        changes={
            "rules": [
                {
                    "when": "args.account_id in [1, 2]",
                    "then": "refuse",
                    "note": "The house accounts are never closed by an agent.",
                },
                {"when": "args.account_id == 7", "then": "approve"},
            ]
        },
        changed_by=world.alice,
    )
    yield tool
    registry.unregister("close_account")


def _close(world: World, account_id: str) -> Any:
    """A call whose account id is written in the body exactly as ``account_id``."""
    body = (
        '{"tool": "close_account", "session_id": "s-close", '
        f'"arguments": {{"account_id": {account_id}}}}}'
    )
    return world.api().client.post(
        "/api/v1/tool-calls",
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {world.token}",
        HTTP_IDEMPOTENCY_KEY=f"close-{account_id}",
    )


@pytest.mark.parametrize("written", ["{}", "{}.0", "{}e0", "{}0E-1"])
def test_a_whole_number_written_with_a_point_or_an_exponent_is_read_as_that_integer(
    world: World, close_account: Tool, written: str
) -> None:
    """JSON Schema takes 1.0, 1e0 and 10E-1 for the integer 1, so the call validates; the
    rules read them as doubles, and ``args.account_id in [1, 2]`` compared a double with
    ints: an error, the rule skipped. A write the rule refuses went to a reviewer instead, a
    refusal the agent dodged by how it wrote the number. Read as the integer the schema says
    it is, it is refused like ``1``; and ``7.0`` is approved by its rule like ``7``."""
    response = _close(world, written.format(1))
    assert response.status_code == 403, response.content[:300]
    assert response.json()["error"]["code"] == "refused_by_policy"
    assert not ToolCall.objects.exists()
    approved = _close(world, written.format(7))
    assert approved.status_code == 202, approved.content[:300]
    assert ToolCall.objects.get().status == Status.APPROVED


PRICES_SCHEMA = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "maxLength": 20},
        # A map: its keys are data (a rule may read any), its values numbers.
        "prices": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
    },
    "required": ["sku", "prices"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("gold", [5, 5.0])
def test_a_number_in_a_map_is_read_as_the_number_its_schema_says(world: World, gold: float) -> None:
    """A map's values (``additionalProperties``) are numbers as their schema types them, as
    an argument's are. They stayed ints when sent whole, so ``args.prices.gold < 10.0``,
    accepted when saved, compared an int with a double on every call that sent ``5``: an
    error, the refusal skipped and the call sent to a reviewer (a read run, had a later
    rule let it), where ``5.0`` was refused."""
    tool = code_tool(
        world,
        "set_prices",
        "Set the shop's prices. Side effect: prices change.",
        PRICES_SCHEMA,
        Risk.WRITE,
    )
    try:
        rules = [
            {
                "when": "has(args.prices.gold) && args.prices.gold < 10.0",
                "then": "refuse",
                "note": "Gold is never sold under 10.",
            },
            {"when": "true", "then": "approve"},
        ]
        registry_services.update_policy(tool=tool, changes={"rules": rules}, changed_by=world.alice)

        def submit(prices: dict[str, Any]) -> Any:
            return world.api().submit(
                {
                    "tool": "set_prices",
                    "session_id": "s-prices",
                    "arguments": {"sku": "s", "prices": prices},
                }
            )

        refused = submit({"gold": gold, "silver": 3})
        assert refused.status_code == 403, refused.content[:300]
        assert refused.json()["error"]["message"] == "Gold is never sold under 10."
        approved = submit({"gold": 50, "silver": 3})
        assert approved.status_code == 202, approved.content[:300]
        call = ToolCall.objects.get(pk=approved.json()["id"])
        assert call.status == Status.APPROVED, call.policy
    finally:
        registry.unregister("set_prices")
