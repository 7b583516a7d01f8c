"""Argument validation returns every error with its JSON path; bad input never reaches a
handler. The @tool decorator refuses malformed declarations at import time."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import World
from tests.tools_registry.conftest import GOOD_SCHEMA, tool_in_code
from tools_registry import registry
from tools_registry.policy import Risk
from tools_registry.registry import InvalidArguments, LookupResult, ToolContext
from tools_registry.schemas import (
    has_argument_parts,
    has_argument_path,
    json_path,
    validate_arguments,
)

ORDER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer_id": {"type": "string", "maxLength": 10, "description": "Who."},
        "card": {
            "type": "object",
            "properties": {"number": {"type": "string", "pattern": "^[0-9]{16}$"}},
            "required": ["number"],
            "additionalProperties": False,
        },
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                },
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
        "plan": {"enum": ["free", "pro"]},
    },
    "required": ["customer_id", "lines"],
    "additionalProperties": False,
}


def paths(arguments: Any, **options: Any) -> list[tuple[str, str]]:
    return [(e.path, e.validator) for e in validate_arguments(ORDER, arguments, **options)]


def test_valid_arguments_have_no_errors() -> None:
    assert paths({"customer_id": "c1", "lines": [{"sku": "a", "quantity": 1}]}) == []


def test_every_error_comes_back_each_with_the_path_of_its_argument() -> None:
    found = paths(
        {
            "customer_id": "x" * 11,
            "card": {"number": "4242"},
            "lines": [{"sku": "a", "quantity": 1}, {"quantity": 0, "colour": "red"}],
            "plan": "gold",
            "coupon": "FREE",
        }
    )
    assert found == [
        ("$.card.number", "pattern"),
        ("$.coupon", "additionalProperties"),
        ("$.customer_id", "maxLength"),
        ("$.lines[1].colour", "additionalProperties"),
        ("$.lines[1].quantity", "minimum"),
        ("$.lines[1].sku", "required"),
        ("$.plan", "enum"),
    ]


def test_missing_required_arguments_are_reported_at_their_own_paths() -> None:
    errors = validate_arguments(ORDER, {})
    assert [(e.path, e.message) for e in errors] == [
        ("$.customer_id", "'customer_id' is required."),
        ("$.lines", "'lines' is required."),
    ]


def test_a_wrong_type_at_the_top_is_reported_at_the_root() -> None:
    assert paths(["not", "an", "object"]) == [("$", "type")]


def test_messages_about_sensitive_arguments_do_not_quote_their_values() -> None:
    errors = validate_arguments(
        ORDER,
        {"customer_id": "c1", "lines": [], "card": {"number": "4242-secret"}},
        sensitive_fields=["card.number"],
    )
    [error] = errors
    assert error.path == "$.card.number"
    assert "4242-secret" not in error.message
    assert (
        "4242-secret"
        in validate_arguments(
            ORDER, {"customer_id": "c1", "lines": [], "card": {"number": "4242-secret"}}
        )[0].message
    )


def test_messages_about_an_object_holding_a_sensitive_argument_do_not_quote_it() -> None:
    schema = {**ORDER, "properties": {**ORDER["properties"], "card": {"type": "array"}}}
    card = {"number": "4242-secret"}
    arguments = {"customer_id": "c1", "lines": [], "card": card}
    # A wrong type at ``card`` would quote the whole object, the sensitive number with it.
    [quoted] = validate_arguments(schema, arguments)
    assert quoted.path == "$.card" and "4242-secret" in quoted.message
    [masked] = validate_arguments(schema, arguments, sensitive_fields=["card.number"])
    assert masked.path == "$.card" and "4242-secret" not in masked.message
    # The root holds every argument: its errors do not quote them either.
    [root] = validate_arguments(
        {"type": "object", "maxProperties": 0}, {"card": card}, sensitive_fields=["card.number"]
    )
    assert root.path == "$" and "4242-secret" not in root.message
    # Messages that name an argument without quoting any value are kept as they are.
    [missing] = validate_arguments(ORDER, {"lines": []}, sensitive_fields=["customer_id"])
    assert missing.message == "'customer_id' is required."


def test_odd_argument_names_get_bracketed_paths() -> None:
    assert json_path(["a b", 2, "ok", "it's"]) == "$['a b'][2].ok['it\\'s']"
    assert json_path(["a.b"]) == "$['a.b']"


def test_argument_paths_walk_objects_arrays_refs_and_branches() -> None:
    schema = {
        "type": "object",
        "properties": {
            "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
            "contact": {
                "anyOf": [{"type": "object", "properties": {"email": {}}}, {"type": "null"}]
            },
        },
        "$defs": {
            "line": {
                "type": "object",
                "properties": {"card": {"type": "object", "properties": {"number": {}}}},
            }
        },
    }
    assert has_argument_path(schema, "lines.card.number")
    assert has_argument_path(schema, "contact.email")
    assert not has_argument_path(schema, "contact.phone")
    assert not has_argument_path(schema, "lines.sku")
    assert not has_argument_path(schema, "")


def test_a_maps_keys_are_paths_a_rule_may_read_but_no_sensitive_field() -> None:
    """A rule may read any key of a map (``args.headers["x-id"]``): its keys are data. A
    sensitive field names a declared argument, as before."""
    schema = {
        "type": "object",
        "properties": {
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "a.b": {"type": "object", "properties": {"c": {}}},
        },
        "additionalProperties": False,
    }
    assert has_argument_parts(schema, ["headers", "x-id"])
    assert not has_argument_parts(schema, ["headers", "x-id", "deeper"])
    assert not has_argument_parts(schema, ["header", "x-id"])
    assert has_argument_parts(schema, ["a.b", "c"]) and not has_argument_parts(schema, ["a", "b"])
    assert not has_argument_path(schema, "headers.x-id")


def test_invalid_arguments_are_refused_by_the_api_with_every_path(world: World) -> None:
    response = world.api().submit(
        {
            "tool": "update_customer",
            "arguments": {"customer_id": "nope", "changes": {"plan": "gold", "age": 3}},
            "session_id": "s1",
        }
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_arguments"
    assert [(d["path"], d["validator"]) for d in error["details"]] == [
        ("$.changes.age", "additionalProperties"),
        ("$.changes.plan", "enum"),
        ("$.customer_id", "pattern"),
    ]


def test_a_registered_tool_never_runs_its_handler_on_invalid_arguments() -> None:
    calls: list[dict[str, Any]] = []

    def handler(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        calls.append(arguments)
        return {}

    name = f"guarded_{uuid.uuid4().hex[:6]}"
    spec = registry.tool(
        name=name, description="Guarded.", input_schema=GOOD_SCHEMA, risk=Risk.READ
    )(handler)
    try:
        ctx = ToolContext(call_id=uuid.uuid4(), idempotency_key="k", timeout=1)
        with pytest.raises(InvalidArguments) as refused:
            spec(ctx, {"customer_id": 5})
        assert [p.path for p in refused.value.problems] == ["$.amount_cents", "$.customer_id"]
        assert calls == []
        assert spec(ctx, {"customer_id": "c1", "amount_cents": 5}) == {}
        assert len(calls) == 1
    finally:
        registry.unregister(name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "bad name!"}, "must match"),
        (
            {"input_schema": {"type": "object", "properties": {"a": {"type": 3}}}},
            "invalid JSON Schema",
        ),
        ({"sensitive_fields": ["card.number"]}, "not in its schema"),
        ({"risk": "dangerous"}, "risk must be"),
        ({"description": "  "}, "needs a description"),
    ],
)
def test_a_malformed_declaration_fails_at_import_time(
    options: dict[str, Any], message: str
) -> None:
    declaration = {
        "name": "credit_account",
        "description": "Credit.",
        "input_schema": GOOD_SCHEMA,
        "risk": Risk.WRITE,
        **options,
    }
    with pytest.raises(ValueError, match=message):
        registry.tool(**declaration)
    assert "credit_account" not in {t.name for t in registry.registered()}


def test_a_name_cannot_be_registered_twice() -> None:
    with tool_in_code() as spec, pytest.raises(ValueError, match="already registered"):
        registry.tool(
            name=spec.name, description="Other.", input_schema=GOOD_SCHEMA, risk=Risk.READ
        )(lambda ctx, arguments: {})


def test_lookup_and_preview_attach_as_decorators_or_keywords() -> None:
    def preview(arguments: dict[str, Any]) -> str:
        return f"Credits {arguments['amount_cents']} cents."

    with tool_in_code(preview=preview) as spec:
        assert spec.preview_fn is preview
        assert spec.lookup_fn is None

        @spec.lookup
        def _lookup(ctx: ToolContext) -> LookupResult:
            return LookupResult.not_found()

        assert spec.lookup_fn is _lookup
        assert registry.get(spec.name).preview_fn({"amount_cents": 5}) == "Credits 5 cents."


def test_the_version_changes_with_the_description_or_the_schema() -> None:
    base = registry.tool_version("t", "d", GOOD_SCHEMA)
    assert registry.tool_version("t", "d", dict(GOOD_SCHEMA)) == base
    assert registry.tool_version("t", "d2", GOOD_SCHEMA) != base
    assert registry.tool_version("t", "d", {**GOOD_SCHEMA, "required": []}) != base


def test_a_long_flat_list_is_checked_whole_not_refused_as_too_complex() -> None:
    """128,000 small numbers (a 256 KB body), three keywords each: more steps than the
    bound that stops a recursive schema's 2**depth, and still a legitimate call."""
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}}
        },
    }
    assert validate_arguments(schema, {"n": [i % 10 for i in range(128_000)]}) == []
    refused = validate_arguments(schema, {"n": [*range(9), 10]})
    assert [(e.path, e.validator) for e in refused] == [("$.n[9]", "maximum")]


def test_a_path_reached_first_by_a_long_way_round_is_still_found_by_a_short_one() -> None:
    """A definition first reached by a route that the walk's depth limit cuts short is
    walked again when a shorter route reaches it: marked once, it was reported missing
    (an admin could not mark the field sensitive)."""
    target = {"$ref": "#/$defs/x"}
    long_way: dict[str, Any] = target
    for _ in range(31):
        long_way = {"anyOf": [long_way]}
    schema = {
        "type": "object",
        "anyOf": [long_way, target],
        "$defs": {"x": {"properties": {"a": {"properties": {"b": {"type": "string"}}}}}},
    }
    assert has_argument_path(schema, "a.b")
