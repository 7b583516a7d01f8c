"""A policy rule meeting a value of a kind CEL gives no answer for (a boolean where it reads a
number, a list where it reads a text, a text where it looks through a list) fails closed, as
CEL's own error would: cel-python answered as Python does, and a rule meant to refuse a call
or keep it for reviewers let it through. Reached where the tool's schema allows more than
one kind (an address or a list of them; a number or true): the rules are checked when saved
on a sample of the first kind only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from approvals.models import Status, ToolCall
from tests.approvals.test_screening_numbers import code_tool
from tests.conftest import World
from tools_registry import registry
from tools_registry import services as registry_services
from tools_registry.models import Tool
from tools_registry.policy import Risk

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

MAIL_SCHEMA = {
    "type": "object",
    "properties": {
        # An address, or a list of them, as many mail APIs take it.
        "to": {
            "anyOf": [
                {"type": "string", "maxLength": 200},
                {"type": "array", "items": {"type": "string", "maxLength": 200}},
            ]
        },
        # Written the other way round: a list of addresses, or one.
        "cc": {
            "anyOf": [
                {"type": "array", "items": {"type": "string", "maxLength": 200}},
                {"type": "string", "maxLength": 200},
            ]
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}},
        # Optional, and nullable as imported APIs write it: null means the house list.
        "bcc": {"type": ["array", "null"], "items": {"type": "string", "maxLength": 200}},
        # How many copies to print; true: one for each recipient.
        "copies": {"type": ["integer", "boolean"]},
    },
    "required": ["to"],
    "additionalProperties": False,
}


@pytest.fixture
def mail_tool(world: World) -> Iterator[Tool]:
    yield code_tool(
        world,
        "post_letter",
        "Post a letter. Side effect: a letter is sent.",
        MAIL_SCHEMA,
        Risk.WRITE,
    )
    registry.unregister("post_letter")


def submit(world: World, arguments: dict[str, Any]) -> ToolCall:
    response = world.api().submit(
        {"tool": "post_letter", "session_id": "s-kinds", "arguments": arguments}
    )
    assert response.status_code == 202, response.content[:300]
    return ToolCall.objects.get(pk=response.json()["id"])


def set_rules(world: World, tool: Tool, rules: list[dict[str, Any]]) -> None:
    registry_services.update_policy(tool=tool, changes={"rules": rules}, changed_by=world.alice)


@pytest.mark.parametrize(
    ("when", "sent", "error"),
    [
        # Written for a text; on a list, cel-python's contains() looked for an equal item.
        (
            'args.to.contains("@rival.com")',
            {"to": ["ceo@rival.com"]},
            "rule 1: contains() reads a string in a string, not a string in a list",
        ),
        # Written for a list; on a text, cel-python's in looked for one character.
        (
            'has(args.cc) && "ceo@rival.com" in args.cc',
            {"to": "x@example.com", "cc": "ceo@rival.com"},
            "rule 1: in looks through a list or a map, not a string",
        ),
        # And an index into a text gave its first character.
        (
            'has(args.cc) && args.cc[0].endsWith("@rival.com")',
            {"to": "x@example.com", "cc": "ceo@rival.com"},
            "rule 1: an index reads a list or a map, not a string",
        ),
    ],
)
def test_a_refusal_that_reads_the_wrong_kind_of_value_is_not_skipped(
    world: World, mail_tool: Tool, when: str, sent: dict[str, Any], error: str
) -> None:
    set_rules(
        world,
        mail_tool,
        [
            {"when": when, "then": "refuse", "note": "Nothing goes to the rival."},
            {"when": "true", "then": "approve"},
        ],
    )
    call = submit(world, sent)
    # It might have refused: the call waits for a reviewer, never approved by the rule after.
    assert call.status == Status.PENDING, call.policy
    assert call.approvals_required == 1
    assert call.policy["rule"] == {"number": None, "errors": [error]}
    # The kind it was written for still decides.
    assert submit(world, {"to": "x@example.com", "cc": ["x@example.com"]}).status == (
        Status.APPROVED
    )


@pytest.mark.parametrize("when", ["args.copies <= 5", "args.copies != 0", "args.copies + 1 < 6"])
def test_a_boolean_is_not_a_number_to_an_approving_rule(
    world: World, mail_tool: Tool, when: str
) -> None:
    """cel-python's booleans are Python ints: ``true <= 5`` held and approved the call."""
    set_rules(world, mail_tool, [{"when": f"has(args.copies) && {when}", "then": "approve"}])
    call = submit(world, {"to": "x@example.com", "copies": True})
    assert call.status == Status.PENDING, call.policy
    assert call.policy["rule"]["errors"] == [
        "rule 1: values of different types are compared (bool and int)"
    ]
    assert submit(world, {"to": "x@example.com", "copies": 2}).status == Status.APPROVED


def test_the_size_of_a_null_is_not_0_to_an_approving_rule(world: World, mail_tool: Tool) -> None:
    """cel-python's size() of a null was 0: ``size(args.bcc) == 0`` approved a call whose
    null the tool may read as its default list."""
    set_rules(
        world, mail_tool, [{"when": "has(args.bcc) && size(args.bcc) == 0", "then": "approve"}]
    )
    call = submit(world, {"to": "x@example.com", "bcc": None})
    assert call.status == Status.PENDING, call.policy
    assert call.policy["rule"]["errors"] == [
        "rule 1: size() reads a string, a list or a map, not a null"
    ]
    assert submit(world, {"to": "x@example.com", "bcc": []}).status == Status.APPROVED


def test_a_rule_using_contains_on_a_list_is_refused_when_saved(
    world: World, mail_tool: Tool
) -> None:
    """CEL's contains() is a text's: on a list it is refused as it is saved, rather than
    answering as a search for an equal item (which ``"x" in args.tags`` is)."""
    with pytest.raises(registry_services.PolicyInvalid) as refused:
        set_rules(world, mail_tool, [{"when": 'args.tags.contains("a")', "then": "refuse"}])
    assert refused.value.message_dict["rules"] == [
        "Rule 1: the condition cannot be evaluated: contains() reads a string in a string, "
        "not a string in a list"
    ]
    set_rules(world, mail_tool, [{"when": '"a" in args.tags', "then": "refuse"}])


def test_a_rule_may_read_each_kind_of_an_argument_its_own_way(
    world: World, mail_tool: Tool
) -> None:
    """``type()`` tells the kinds apart, so the rules of an argument the schema allows as an
    address or a list of them decide on both, rather than fail closed on one."""
    set_rules(
        world,
        mail_tool,
        [
            {
                "when": 'type(args.to) == string && args.to.contains("@rival.com")',
                "then": "refuse",
            },
            {
                "when": 'type(args.to) == list && args.to.exists(a, a.contains("@rival.com"))',
                "then": "refuse",
            },
            {"when": "true", "then": "approve"},
        ],
    )
    for to in ("ceo@rival.com", ["x@example.com", "ceo@rival.com"]):
        response = world.api().submit(
            {"tool": "post_letter", "session_id": "s-kinds", "arguments": {"to": to}}
        )
        assert response.status_code == 403, response.content[:300]
        assert response.json()["error"]["code"] == "refused_by_policy"
    for to in ("x@example.com", ["x@example.com"]):
        call = submit(world, {"to": to})
        assert call.status == Status.APPROVED and call.policy["rule"]["number"] == 3


PRINT_SCHEMA = {
    "type": "object",
    "properties": {
        # The pages to print; true among them: every page.
        "pages": {"type": "array", "items": {"type": ["integer", "boolean"]}},
        # How many copies; true: one for each recipient.
        "options": {"type": "object", "properties": {"copies": {"type": ["integer", "boolean"]}}},
    },
    "additionalProperties": False,
}


@pytest.fixture
def print_tool(world: World) -> Iterator[Tool]:
    yield code_tool(
        world, "print_job", "Print a document. Side effect: paper.", PRINT_SCHEMA, Risk.WRITE
    )
    registry.unregister("print_job")


@pytest.mark.parametrize(
    ("when", "sent", "allowed"),
    [
        ("has(args.pages) && args.pages == [1]", {"pages": [True]}, {"pages": [1]}),
        (
            "has(args.pages) && size(args.pages) == 1 && 1 in args.pages",
            {"pages": [True]},
            {"pages": [1]},
        ),
        (
            'has(args.options) && args.options == {"copies": 1}',
            {"options": {"copies": True}},
            {"options": {"copies": 1}},
        ),
    ],
)
def test_a_boolean_inside_a_list_or_a_map_is_not_a_number_to_an_approving_rule(
    world: World, print_tool: Tool, when: str, sent: dict[str, Any], allowed: dict[str, Any]
) -> None:
    """A list's items and a map's values were compared as Python compares them, ``true`` as
    ``1``: ``args.pages == [1]`` approved the printing of every page (``[true]``), where
    ``args.pages[0] == 1`` fails closed."""
    set_rules(world, print_tool, [{"when": when, "then": "approve"}])
    response = world.api().submit({"tool": "print_job", "session_id": "s-kinds", "arguments": sent})
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert call.status == Status.PENDING, call.policy
    assert call.policy["rule"]["errors"] == [
        "rule 1: values of different types are compared (bool and int)"
    ]
    response = world.api().submit(
        {"tool": "print_job", "session_id": "s-kinds", "arguments": allowed}
    )
    assert ToolCall.objects.get(pk=response.json()["id"]).status == Status.APPROVED
