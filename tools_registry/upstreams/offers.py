"""What an upstream offers, read from its OpenAPI document or its MCP server's tool list,
before anything is stored: the tools Countersign can import, and the ones it cannot, each
with the reason (said to the admin, never a silent skip)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools_registry.registry import TOOL_NAME
from tools_registry.schemas import schema_problems

JSON = dict[str, Any]
SEPARATOR = "__"


class ImportFailed(Exception):
    """The upstream's offer could not be read at all (unreachable, not a valid document or
    server); nothing is changed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ImportedTool:
    source_name: str  # the MCP tool's name, or the OpenAPI operationId
    name: str  # <upstream>__<source_name>
    description: str
    input_schema: JSON
    risk: str
    overwrites: bool
    idempotent: bool
    open_world: bool
    output_schema: JSON | None = None
    operation: JSON | None = None  # HTTP APIs: how a call becomes a request


@dataclass
class Offer:
    tools: list[ImportedTool] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def tool_name(upstream: str, source_name: str) -> str | None:
    """``<upstream>__<source_name>``, or None when that is not a name agents can use
    (OpenAI, Anthropic and MCP all take ``^[a-zA-Z0-9_-]{1,64}$``)."""
    name = f"{upstream}{SEPARATOR}{source_name}"
    return name if TOOL_NAME.match(name) else None


def object_schema_problems(schema: Any) -> list[str]:
    """Why ``schema`` cannot be a tool's input schema (an object schema, valid 2020-12)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return ["its input schema is not an object schema"]
    return schema_problems(schema)


def drop_duplicates(offer: Offer) -> Offer:
    """Tools whose names collide are all left out: which one an agent meant is unknowable."""
    counts: dict[str, int] = {}
    for imported in offer.tools:
        counts[imported.name] = counts.get(imported.name, 0) + 1
    kept = [t for t in offer.tools if counts[t.name] == 1]
    skipped = [
        f"{name}: offered {n} times; none was imported" for name, n in counts.items() if n > 1
    ]
    return Offer(tools=kept, skipped=[*offer.skipped, *skipped])
