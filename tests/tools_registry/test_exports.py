"""GET /api/v1/tools?format=...: the agent's allowed tools, in each ecosystem's shape."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator
from mcp_types import methods
from openai.types.responses import FunctionToolParam
from pydantic import TypeAdapter

from approvals.models import ToolCall
from tests.conftest import World
from tests.tools_registry.export_shapes import SHAPES
from tools_registry.exports import FORMATS, export_tools
from tools_registry.models import Tool

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

ARGUMENTS_SCHEMA = {
    "openai": lambda d: d["function"]["parameters"],
    "openai-responses": lambda d: d["parameters"],
    "anthropic": lambda d: d["input_schema"],
    "mcp": lambda d: d["inputSchema"],
}


def _name(definition: dict) -> str:
    return definition["function"]["name"] if "function" in definition else definition["name"]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_has_its_ecosystems_shape(world: World, fmt: str) -> None:
    response = world.api().get(f"/api/v1/tools?format={fmt}")
    assert response.status_code == 200
    definitions = response.json()
    assert len(definitions) == len(world.tools)
    if fmt == "openai-responses":
        # The openai package's own type of a Responses API / Agents SDK function tool.
        for definition in definitions:
            TypeAdapter(FunctionToolParam).validate_python(definition, strict=True)
            assert set(definition) <= set(FunctionToolParam.__annotations__)
            assert definition["strict"] is True
        return
    if fmt == "mcp":
        # The MCP SDK's own wire schema of a tool list, at the revision most clients speak:
        # every field must be one it knows (its dump would drop an unknown one).
        listed = methods.serialize_server_result("tools/list", "2025-11-25", {"tools": definitions})
        assert listed["tools"] == definitions
    else:
        validator = Draft202012Validator(SHAPES[fmt])
        assert [list(validator.iter_errors(d)) for d in definitions] == [[]] * len(definitions)
    for definition in definitions:
        # The arguments schema is exported as declared, and is itself valid JSON Schema.
        schema = ARGUMENTS_SCHEMA[fmt](definition)
        assert schema == world.tools[_name(definition)].input_schema
        Draft202012Validator.check_schema(schema)


def test_the_shapes_refuse_a_malformed_definition(world: World) -> None:
    [definition] = export_tools([world.tools["send_email"]], "openai")
    broken = {**definition, "function": {**definition["function"], "name": "send email!"}}
    assert list(Draft202012Validator(SHAPES["openai"]).iter_errors(broken))
    assert list(Draft202012Validator(SHAPES["anthropic"]).iter_errors(definition))


def test_mcp_hints_mean_what_mcp_defines(world: World) -> None:
    """destructiveHint: deletes or overwrites (false means "only additive updates", so an
    update that overwrites fields is destructive though its risk is write); idempotentHint:
    a repeat changes nothing more; openWorldHint: reaches outside systems."""
    definitions = {d["name"]: d for d in world.api().get("/api/v1/tools?format=mcp").json()}
    hints = {
        name: tuple(
            d["annotations"][hint]
            for hint in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
        )
        for name, d in definitions.items()
    }
    assert hints == {
        "search_docs": (True, False, True, False),
        "get_customer": (True, False, True, False),
        "send_email": (False, False, False, True),
        "update_customer": (False, True, True, False),
        "issue_refund": (False, False, False, True),
        "delete_customer": (False, True, True, False),
    }
    assert definitions["delete_customer"]["title"] == "Delete customer"


def test_only_the_agents_allowed_enabled_tools_in_code_are_listed(world: World) -> None:
    world.agent.allowed_tools.remove(world.tools["delete_customer"])
    Tool.objects.filter(name="issue_refund").update(enabled=False)
    Tool.objects.filter(name="update_customer").update(available=False)
    names = [d["name"] for d in world.api().get("/api/v1/tools?format=anthropic").json()]
    assert names == ["get_customer", "search_docs", "send_email"]


def test_an_unknown_format_is_a_400(world: World) -> None:
    response = world.api().get("/api/v1/tools?format=yaml")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    # A query parameter, named as every parameter's problem is; there is no body to fix.
    assert error["details"] == [
        {
            "path": "query.format",
            "message": "must be one of openai, openai-responses, anthropic, mcp",
        }
    ]
    assert "body" not in error["suggestion"]


def _strict_objects(schema: dict) -> list[dict]:
    """Every object schema inside ``schema``, for strict mode's rules."""
    found = []
    if schema.get("type") in ("object", ["object", "null"]) or "properties" in schema:
        found.append(schema)
    for sub in (schema.get("properties") or {}).values():
        found += _strict_objects(sub)
    for sub in schema.get("anyOf", []):
        found += _strict_objects(sub)
    return found


def test_the_strict_shapes_follow_strict_modes_rules(world: World) -> None:
    definitions = world.api().get("/api/v1/tools?format=openai-responses").json()
    for definition in definitions:
        for schema in _strict_objects(definition["parameters"]):
            assert schema["additionalProperties"] is False, definition["name"]
            assert schema["required"] == list(schema["properties"]), definition["name"]


def test_strict_mode_keeps_optional_fields_optional(world: World) -> None:
    """A strict model fills every field, with null for those it leaves out: Countersign
    drops those nulls, so the call is the patch the model meant, not an overwrite."""
    definitions = {
        d["name"]: d for d in world.api().get("/api/v1/tools?format=openai-responses").json()
    }
    changes = definitions["update_customer"]["parameters"]["properties"]["changes"]
    assert changes["properties"]["name"]["type"] == ["string", "null"]
    limit = definitions["search_docs"]["parameters"]["properties"]["limit"]
    assert limit["type"] == ["integer", "null"] and "default 5" in limit["description"]

    patch = {"name": None, "email": None, "phone": None, "plan": "pro"}
    body = {
        "tool": "update_customer",
        "arguments": {"customer_id": "cus_0001", "changes": patch},
        "session_id": "strict",
    }
    response = world.api().submit(body)
    assert response.status_code == 202, response.content
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert call.arguments == {"customer_id": "cus_0001", "changes": {"plan": "pro"}}

    read = world.api().submit(
        {"tool": "search_docs", "arguments": {"query": "refund", "limit": None}, "session_id": "s"}
    )
    assert read.status_code == 200 and read.json()["result"]["count"] >= 1
    # All nulls is no change at all: the tool's own schema (minProperties) still says no.
    nothing = {**body, "arguments": {"customer_id": "cus_0001", "changes": dict.fromkeys(patch)}}
    refused = world.api().submit(nothing)
    assert refused.json()["error"]["code"] == "invalid_arguments"
    assert "$.changes" in {d["path"] for d in refused.json()["error"]["details"]}
    # A null where the field is required is still a null, and refused.
    wrong = {**body, "arguments": {"customer_id": None, "changes": {"plan": "pro"}}}
    assert world.api().submit(wrong).json()["error"]["code"] == "invalid_arguments"
