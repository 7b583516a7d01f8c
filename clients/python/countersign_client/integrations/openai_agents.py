"""Countersign-gated tools for the OpenAI Agents SDK (``FunctionTool``), strict.

    from agents import Agent, Runner
    from countersign_client import AsyncCountersign
    from countersign_client.integrations.openai_agents import countersign_tools

    cs = AsyncCountersign(url, token)
    agent = Agent(name="support", tools=await countersign_tools(cs, session_id="task-42"))

The schemas are Countersign's ``openai-responses`` export: valid in strict mode without
changing what a tool does (optional fields are required-but-nullable, and Countersign drops
those nulls). Invoking a tool sends the call through Countersign, waits (long-poll) for the
reviewers and the result, and returns the result as JSON text; a rejection (with the
reviewer's reason), an expiry or a refusal is returned as the tool's output for the model
to read, not raised. The step of each call is the SDK's tool-call id.
"""

from __future__ import annotations

import json
from typing import Any

from agents import FunctionTool
from agents.tool_context import ToolContext

from countersign_client.aio import AsyncCountersign
from countersign_client.integrations._common import Client, Refusal, call_async


async def countersign_tools(
    client: Client, *, session_id: str, **fields: Any
) -> list[FunctionTool]:
    """The agent's tools as Agents SDK ``FunctionTool``s. ``fields`` go with every call
    (``reasoning``, ``on_behalf_of``, ``wait_timeout``...)."""
    if isinstance(client, AsyncCountersign):
        definitions = await client.tools("openai-responses")
    else:
        definitions = client.tools("openai-responses")
    return [_tool(client, d, session_id, fields) for d in definitions]


def _tool(
    client: Client, definition: dict[str, Any], session_id: str, fields: dict[str, Any]
) -> FunctionTool:
    name = definition["name"]

    async def invoke(ctx: ToolContext[Any], input_json: str) -> str:
        try:
            arguments = json.loads(input_json or "{}")
        except ValueError as exc:
            return f"The arguments are not valid JSON: {exc}"
        step = getattr(ctx, "tool_call_id", None) or None
        try:
            return await call_async(client, name, arguments, step, session_id=session_id, **fields)
        except Refusal as exc:
            return str(exc)

    return FunctionTool(
        name=name,
        description=definition.get("description", ""),
        params_json_schema=definition["parameters"],
        on_invoke_tool=invoke,
        strict_json_schema=bool(definition.get("strict", True)),
    )
