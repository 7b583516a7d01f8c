"""What every door checks of an agent's request before intake: JSON the database can store
and hash, and the fields a tool call has. The REST API and the MCP endpoint share them."""

from __future__ import annotations

import json
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
    "named_twice",
    "parse_call",
    "reject_constant",
    "unique_keys",
]


def named_twice(duplicate: DuplicateKey) -> str:
    """What a door answers a body that names one key twice in an object (``unique_keys``),
    the REST API and the MCP endpoint alike."""
    return (
        f"The body names {json.dumps(duplicate.name[:100])} more than once in one object; "
        "send each key once (which of the values counts would be up to whoever reads "
        "the body, and the reviewer sees only one of them)."
    )


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
