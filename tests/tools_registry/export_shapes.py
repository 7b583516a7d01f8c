"""The tool-definition shapes of OpenAI and Anthropic, as small JSON Schemas (the MCP shape
is checked against the MCP SDK's own types).

Written from each ecosystem's published reference: OpenAI's function tools (Chat
Completions ``tools``) and Anthropic's Messages API ``tools``.
"""

from __future__ import annotations

from typing import Any

# Both OpenAI and Anthropic accept tool names of this form.
NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"}
# What every ecosystem expects of the arguments schema: a JSON Schema object.
OBJECT_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"const": "object"},
        "properties": {"type": "object", "additionalProperties": {"type": "object"}},
        "required": {"type": "array", "items": {"type": "string"}},
    },
}

OPENAI_TOOL: dict[str, Any] = {
    "type": "object",
    "required": ["type", "function"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": NAME,
                "description": {"type": "string"},
                "parameters": OBJECT_SCHEMA,
                "strict": {"type": ["boolean", "null"]},
            },
        },
    },
}

ANTHROPIC_TOOL: dict[str, Any] = {
    "type": "object",
    "required": ["name", "input_schema"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "description": {"type": "string"},
        "input_schema": OBJECT_SCHEMA,
        "cache_control": {"type": ["object", "null"]},
    },
}

SHAPES = {"openai": OPENAI_TOOL, "anthropic": ANTHROPIC_TOOL}
