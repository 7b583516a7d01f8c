"""Schema lint: every rule on a good and a bad definition; the demo tools pass;
``lint_tools`` fails on errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from tests.tools_registry.conftest import GOOD_DESCRIPTION, GOOD_SCHEMA, tool_in_code
from tools_registry import registry
from tools_registry.lint import RULES, lint_definition
from tools_registry.policy import Risk

Schema = dict[str, Any]


def lint(
    schema: Schema | None = None, *, description: str = GOOD_DESCRIPTION, risk: str = Risk.WRITE
) -> list[tuple[str, str]]:
    problems = lint_definition(
        name="credit_account",
        description=description,
        risk=risk,
        input_schema=GOOD_SCHEMA if schema is None else schema,
    )
    return [(p.rule, p.path) for p in problems]


def edited(change: Callable[[Schema], None]) -> Schema:
    schema = copy.deepcopy(GOOD_SCHEMA)
    change(schema)
    return schema


def prop(schema: Schema, name: str) -> Schema:
    return schema["properties"][name]


def test_the_good_definition_passes_every_rule() -> None:
    assert lint() == []


@pytest.mark.parametrize("spec", registry.registered(), ids=lambda s: s.name)
def test_every_demo_tool_passes(spec: registry.RegisteredTool) -> None:
    assert (
        lint_definition(
            name=spec.name,
            description=spec.description,
            risk=spec.risk,
            input_schema=spec.input_schema,
        )
        == []
    )


BAD: list[tuple[str, Callable[[], list[tuple[str, str]]], str]] = [
    ("schema_valid", lambda: lint({"type": "object", "properties": {"a": {"type": 12}}}), "$"),
    (
        "schema_valid",
        lambda: lint({"type": "array", "items": {"type": "string", "maxLength": 9}}),
        "$",
    ),
    ("description", lambda: lint(description="Credits."), "$"),
    ("description", lambda: lint(description="credit_account", risk=Risk.READ), "$"),
    (
        "side_effects",
        lambda: lint(description="Credit a customer's balance; it cannot be undone."),
        "$",
    ),
    (
        "side_effects",
        lambda: lint(description="Credit a customer's balance. Side effect: the balance grows."),
        "$",
    ),
    (
        "argument_names",
        lambda: lint(
            edited(
                lambda s: (
                    s["properties"].update(id=s["properties"].pop("customer_id"))
                    or s.update(required=["id", "amount_cents"])
                )
            )
        ),
        "$.id",
    ),
    (
        "argument_names",
        lambda: lint(
            edited(
                lambda s: s["properties"].update(
                    data={"type": "integer", "description": "Anything."}
                )
            )
        ),
        "$.data",
    ),
    (
        "property_descriptions",
        lambda: lint(edited(lambda s: prop(s, "amount_cents").pop("description"))),
        "$.amount_cents",
    ),
    (
        "closed_sets",
        lambda: lint(
            edited(lambda s: prop(s, "customer_id").update(pattern="^(gold|silver|bronze)$"))
        ),
        "$.customer_id",
    ),
    (
        "closed_sets",
        lambda: lint(
            edited(
                lambda s: prop(s, "customer_id").update(
                    description="One of gold, silver or bronze."
                )
            )
        ),
        "$.customer_id",
    ),
    ("required_explicit", lambda: lint(edited(lambda s: s.pop("required"))), "$"),
    (
        "required_explicit",
        lambda: lint(edited(lambda s: s.update(required=["customer_id", "amount"]))),
        "$",
    ),
    (
        "string_max_length",
        lambda: lint(edited(lambda s: prop(s, "customer_id").pop("maxLength"))),
        "$.customer_id",
    ),
    ("additional_properties", lambda: lint(edited(lambda s: s.pop("additionalProperties"))), "$"),
    (
        "additional_properties",
        lambda: lint(edited(lambda s: s.update(additionalProperties=True))),
        "$",
    ),
]


@pytest.mark.parametrize(
    ("rule", "run", "path"), BAD, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD)]
)
def test_each_rule_catches_its_bad_definition(rule: str, run: Callable[[], Any], path: str) -> None:
    assert (rule, path) in run()


def test_every_rule_has_a_bad_example() -> None:
    assert {rule for rule, _, _ in BAD} == set(RULES)


NESTED: Schema = {
    "type": "object",
    "properties": {
        "lines": {
            "type": "array",
            "description": "The order lines.",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "description": "Stock unit."},
                    "value": {"type": "integer", "description": "Quantity."},
                },
                "required": ["sku"],
            },
        },
        "changes": {
            "type": "object",
            "description": "Fields to change.",
            "properties": {"plan": {"type": "string", "description": "free|pro|team"}},
            "minProperties": 1,
            "additionalProperties": False,
        },
    },
    "required": ["lines"],
    "additionalProperties": False,
}


def test_nested_objects_and_array_items_are_linted_with_their_paths() -> None:
    found = lint(NESTED)
    assert ("string_max_length", "$.lines[*].sku") in found
    assert ("additional_properties", "$.lines[*]") in found
    assert ("argument_names", "$.lines[*].value") in found
    assert ("closed_sets", "$.changes.plan") in found
    # A nested patch object may state minProperties instead of required.
    assert ("required_explicit", "$.changes") not in found


def test_an_enum_or_const_string_needs_no_max_length_and_is_a_closed_set() -> None:
    schema = edited(
        lambda s: (
            prop(s, "customer_id").update(
                enum=["cus_0001", "cus_0002"], description="One of the two test customers."
            )
            or prop(s, "customer_id").pop("maxLength")
        )
    )
    assert lint(schema) == []


def test_a_read_tool_needs_no_side_effect_statement() -> None:
    assert lint(description="Look up a customer's balance in cents.", risk=Risk.READ) == []


def test_lint_tools_passes_on_the_demo_tools() -> None:
    out = StringIO()
    call_command("lint_tools", stdout=out)
    assert f"{len(registry.registered())} tool(s) pass the lint." in out.getvalue()


def test_lint_tools_fails_and_names_the_problems_of_a_bad_tool() -> None:
    schema = edited(lambda s: prop(s, "customer_id").pop("maxLength"))
    with tool_in_code(input_schema=schema, description="Credits money.") as spec:
        out = StringIO()
        with pytest.raises(CommandError, match="lint problem"):
            call_command("lint_tools", stdout=out)
    report = out.getvalue()
    assert f"FAIL  {spec.name}" in report
    assert "[string_max_length] $.customer_id" in report
    assert "[side_effects] $" in report
    assert "ok    send_email" in report


@pytest.mark.django_db
def test_lint_tools_can_lint_the_stored_definitions(world: Any) -> None:
    from tools_registry.models import Tool

    Tool.objects.filter(name="send_email").update(description="Sends.")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("lint_tools", "--stored", "send_email", stdout=out)
    assert "[description] $" in out.getvalue()


@pytest.mark.django_db
def test_lint_tools_names_stored_rules_that_the_checks_of_today_refuse(world: Any) -> None:
    """Rules saved before a check existed (an argument read as args["amuont"], refused when
    saved since) keep running as written and never match; after an upgrade, the stored lint
    is where an operator finds them."""
    from tools_registry.models import Tool

    misspelt = [{"when": 'args["sujbect"] == "refund"', "then": "require", "approvals": 2}]
    Tool.objects.filter(name="send_email").update(rules=misspelt)
    out = StringIO()
    with pytest.raises(CommandError, match="lint problem"):
        call_command("lint_tools", "--stored", "send_email", stdout=out)
    assert (
        "[policy_rules] $: Rule 1: args.sujbect is not an argument of this tool." in out.getvalue()
    )

    Tool.objects.filter(name="send_email").update(rules=[])
    out = StringIO()
    call_command("lint_tools", "--stored", "send_email", stdout=out)
    assert "ok    send_email" in out.getvalue()
