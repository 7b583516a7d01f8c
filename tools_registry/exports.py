"""Tool definitions in the shapes the agent ecosystems expect."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import mcp_types

from tools_registry.models import Tool
from tools_registry.policy import Risk
from tools_registry.schemas import foreign_references
from tools_registry.strict import NotStrictable, strict_schema

JSON = dict[str, Any]


def openai_format(tool: Tool) -> JSON:
    """OpenAI function-calling tool definition."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.input_schema,
        },
    }


def openai_responses_format(tool: Tool) -> JSON:
    """OpenAI Responses API / Agents SDK function tool (``FunctionToolParam``), strict.

    Optional fields are required-but-nullable (``tools_registry.strict``); Countersign drops
    those nulls before validating, so strict mode never changes what the tool does. A tool
    whose schema has no strict form (an object open to any property) is exported as it is,
    with ``strict: false``.
    """
    try:
        parameters, strict = strict_schema(tool.input_schema), True
    except NotStrictable:
        parameters, strict = tool.input_schema, False
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": parameters,
        "strict": strict,
    }


def anthropic_format(tool: Tool) -> JSON:
    """Anthropic Messages API tool definition."""
    return {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}


def title(tool: Tool) -> str:
    return tool.name.replace("_", " ").replace("-", " ").capitalize()


def published_output_schema(tool: Tool) -> dict[str, Any] | None:
    """The schema of a tool's result as MCP clients are told it (reads only: a write's
    answer is its task or its pending state first); they check every result against it. Not
    one that refers outside itself (stored before such schemas were refused at import): a
    client cannot resolve it, and Countersign never fetches it."""
    schema = tool.output_schema
    if tool.risk != Risk.READ or not schema or foreign_references(schema):
        return None
    return schema


def mcp_tool(tool: Tool) -> mcp_types.Tool:
    """The tool as the Model Context Protocol describes one, with its behaviour hints in
    MCP's own meaning (the SDK's ``ToolAnnotations``):

    * ``readOnlyHint``: a read, which changes nothing;
    * ``destructiveHint``: the call deletes or overwrites existing data. MCP defines false
      as "only additive updates", so a write that overwrites a record is destructive here
      although its Countersign risk is ``write``; sending an e-mail only adds;
    * ``idempotentHint``: repeating the call with the same arguments has no further effect;
    * ``openWorldHint``: the call reaches systems outside the organisation's own.

    Calls that wait for a person may run as MCP tasks (``execution.taskSupport``); a read
    answers at once and may declare the schema of its result.
    """
    read = tool.risk == Risk.READ
    return mcp_types.Tool(
        name=tool.name,
        title=title(tool),
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=published_output_schema(tool),
        annotations=mcp_types.ToolAnnotations(
            title=title(tool),
            read_only_hint=read,
            destructive_hint=not read and (tool.overwrites or tool.risk == Risk.DESTRUCTIVE),
            idempotent_hint=tool.idempotent,
            open_world_hint=tool.open_world,
        ),
        execution=mcp_types.ToolExecution(task_support="forbidden" if read else "optional"),
    )


def mcp_format(tool: Tool) -> JSON:
    """The MCP tool definition as JSON (what ``tools/list`` answers with)."""
    return mcp_tool(tool).model_dump(by_alias=True, mode="json", exclude_none=True)


FORMATS: dict[str, Callable[[Tool], JSON]] = {
    "openai": openai_format,
    "openai-responses": openai_responses_format,
    "anthropic": anthropic_format,
    "mcp": mcp_format,
}


def export_tools(tools: Iterable[Tool], fmt: str) -> list[JSON]:
    """The tools as definitions in ``fmt`` (a key of ``FORMATS``)."""
    return [FORMATS[fmt](tool) for tool in tools]
