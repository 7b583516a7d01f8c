"""Shapes of the agent API's requests and responses (pydantic, shown in the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from ninja import Schema
from pydantic import (
    AnyHttpUrl,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    field_validator,
)


class TokenCost(Schema):
    model_config = ConfigDict(extra="forbid")

    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    usd: NonNegativeFloat | None = None


class ToolCallIn(Schema):
    """A tool call an agent asks Countersign to make."""

    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1, max_length=64, description="Name of one of your tools.")
    arguments: dict[str, Any] = Field(
        description="Arguments, valid against the tool's JSON Schema."
    )
    session_id: str = Field(
        min_length=1, max_length=128, description="Your agent run; rounds are counted per session."
    )
    # Any JSON here: what is wrong with a user is refused (and audited) by intake, with the
    # path of the problem, as invalid_end_user.
    on_behalf_of: Any = Field(
        default="",
        description="The end user the agent acts for: their id, or {id, roles} (roles only "
        "from an agent an admin trusts to assert them). See docs/end-users.md.",
        json_schema_extra={
            "oneOf": [
                {"type": "string", "maxLength": 150},
                {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "maxLength": 150},
                        "roles": {
                            "type": "array",
                            "items": {"type": "string", "maxLength": 64},
                            "maxItems": 32,
                        },
                    },
                    "required": ["id"],
                    "additionalProperties": False,
                },
            ]
        },
    )
    reasoning: str = Field(
        default="",
        max_length=20_000,
        description="Why the agent wants this call; reviewers read it.",
    )
    token_cost: TokenCost | None = None
    callback_url: AnyHttpUrl | None = Field(
        default=None,
        description="Where to POST the signed terminal state of the call (at most 2048 characters).",
    )

    @field_validator("callback_url")
    @classmethod
    def _fits_the_column(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and len(str(value)) > 2048:
            raise ValueError("callback_url is longer than 2048 characters")
        return value


class ErrorBody(Schema):
    code: str
    message: str
    suggestion: str
    retryable: bool
    details: Any = None


class ErrorOut(Schema):
    error: ErrorBody


class DecisionOut(Schema):
    verdict: Literal["approve", "reject"]
    comment: str
    decided_at: datetime


class ToolCallOut(Schema):
    id: UUID
    tool: str
    risk: str
    status: str
    session_id: str
    status_url: str
    created_at: datetime
    expires_at: datetime | None = None
    approvals_required: int
    approvals: int
    decision: DecisionOut | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    needs_attention: bool = False
