"""What every door checks of an agent's request before intake: JSON the database can store
and hash, and the fields a tool call has. The REST API and the MCP endpoint share them."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError as PydanticValidationError

from core.json_values import (
    MAX_JSON_DEPTH,
    DuplicateKey,
    as_stored,
    json_problem,
    reject_constant,
    unique_keys,
)
from gateway import errors
from gateway.schemas import ToolCallIn

__all__ = [
    "MAX_JSON_DEPTH",
    "DuplicateKey",
    "json_problem",
    "parse_call",
    "reject_constant",
    "unique_keys",
]


def parse_call(raw: dict[str, Any]) -> ToolCallIn:
    """The call in ``raw`` (checked by ``json_problem``), its arguments as the database will
    keep them: validated, hashed for approval and run as they are stored."""
    try:
        payload = ToolCallIn.model_validate(raw)
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
    payload.arguments = as_stored(payload.arguments)
    return payload
