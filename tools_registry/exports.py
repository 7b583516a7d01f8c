"""Tool definitions in the shapes the agent ecosystems expect."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tools_registry.models import Tool
from tools_registry.policy import Risk

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


def anthropic_format(tool: Tool) -> JSON:
    """Anthropic Messages API tool definition."""
    return {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}


def title(tool: Tool) -> str:
    return tool.name.replace("_", " ").replace("-", " ").capitalize()


def mcp_format(tool: Tool) -> JSON:
    """Model Context Protocol tool, with behaviour hints derived from the risk class.

    ``destructiveHint`` is true only for destructive tools: a write (sending an e-mail)
    adds to the world rather than destroying something, which is what MCP means by it.
    """
    return {
        "name": tool.name,
        "title": title(tool),
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "annotations": {
            "title": title(tool),
            "readOnlyHint": tool.risk == Risk.READ,
            "destructiveHint": tool.risk == Risk.DESTRUCTIVE,
            # Countersign makes every approved call run once, whatever the tool.
            "idempotentHint": tool.risk == Risk.READ,
            "openWorldHint": True,
        },
    }


FORMATS: dict[str, Callable[[Tool], JSON]] = {
    "openai": openai_format,
    "anthropic": anthropic_format,
    "mcp": mcp_format,
}


def export_tools(tools: Iterable[Tool], fmt: str) -> list[JSON]:
    """The tools as definitions in ``fmt`` (a key of ``FORMATS``)."""
    return [FORMATS[fmt](tool) for tool in tools]
