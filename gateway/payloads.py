"""What every door checks of an agent's request before intake: JSON the database can store
and hash, and the fields a tool call has. The REST API and the MCP endpoint share them."""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from gateway import errors
from gateway.schemas import ToolCallIn

MAX_JSON_DEPTH = 32
# NUL cannot be stored by PostgreSQL; lone surrogates cannot be encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_problem(value: Any) -> str:
    """Why a parsed body cannot be stored and hashed as JSON ("" when it can).

    Walks without recursion, so no nesting depth can exhaust the stack; everything past
    this check (hashing, masking, schema validation, jsonb) sees bounded, clean JSON.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"it nests deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return "a string holds a NUL character or an unpaired surrogate"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "a number is out of range"
        elif isinstance(item, dict):
            for name, child in item.items():
                if _UNSTORABLE.search(name):
                    return "a key holds a NUL character or an unpaired surrogate"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return ""


def parse_call(raw: dict[str, Any]) -> ToolCallIn:
    try:
        return ToolCallIn.model_validate(raw)
    except PydanticValidationError as exc:
        details = [
            {
                "path": "$"
                + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]),
                "message": e["msg"],
            }
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise errors.invalid_request(
            "The request body does not have the expected fields.", details
        ) from None
