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
    field_validator,
)

from tools_registry.role_scopes import HIDDEN_BMP, is_visible_id

# What intake takes for a user's id and a role (tools_registry.end_users, role_scopes): no
# control characters; an id not only spaces, nor holding a character no reader sees
# (role_scopes.HIDDEN_BMP; the server refuses those beyond the BMP too); a role without
# spaces at either end.
# (C1 controls too: U+0085 is a space to Python's str.strip(), not to a JSON Schema \s.)
_ID_CHAR = rf"[^\u0000-\u001f\u007f-\u009f{HIDDEN_BMP}]"
_ID_NON_SPACE = rf"[^\u0000-\u001f\u007f-\u009f\s{HIDDEN_BMP}]"
USER_ID_PATTERN = rf"^({_ID_CHAR}*{_ID_NON_SPACE}{_ID_CHAR}*)?$"
# A session id names an agent's run on the reviewers' pages: no control character, nothing
# hidden (``_no_hidden_session_id`` refuses those beyond the BMP too).
SESSION_ID_PATTERN = rf"^{_ID_CHAR}+$"
ROLE_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f\s]([^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f\s])?$"
ROLES_QUERY_PATTERN = (
    r"^[^,\u0000-\u001f\u007f-\u009f]{1,64}(,[^,\u0000-\u001f\u007f-\u009f]{1,64}){0,31}$"
)

# Bounds of a plausible cost: a call's tokens and dollars are stored, summed and shown on
# the analytics page, where 10**30 tokens would be a lie and 1e308 an overflow.
MAX_TOKENS = 10**9
MAX_USD = 10**6


class TokenCost(Schema):
    """What the model turn that proposed the call cost, as the agent reports it. Strict,
    as the call it comes in (a nested model does not inherit its parent's strictness)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    usd: float | None = Field(default=None, ge=0, le=MAX_USD, allow_inf_nan=False)

    @field_validator("input_tokens", "output_tokens", mode="before")
    @classmethod
    def _whole_float_is_an_integer(cls, value: Any) -> Any:
        # JSON Schema's "integer", which the document says, is any number without a
        # fraction: 2.0 and 1e3 are integers to a generated client, so they are here too,
        # kept as ints. (A bool, a string or a fraction is still refused, strictly.)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


# What the API accepts as a callback URL, said as a pattern so that a client generated from
# the OpenAPI document accepts exactly what the server does: http(s), a DNS name or an IPv4 (no user
# info), an optional port, a plain path and query.
# A host is a name whose last label starts with a letter, or an IPv4 address (a dotted
# run of digits that is neither, like 1.2.3, is refused by the URL check too).
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
CALLBACK_URL_PATTERN = (
    r"^https?://(([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
    rf"|{_OCTET}(\.{_OCTET}){{3}})"
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]*)*(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?$"
)


class ToolCallIn(Schema):
    """A tool call an agent asks Countersign to make.

    Strict: a value of the wrong JSON type is refused, never coerced (``"5"`` is not 5,
    ``true`` is not 1), so the OpenAPI document says exactly what is accepted.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    tool: str = Field(min_length=1, max_length=64, description="Name of one of your tools.")
    arguments: dict[str, Any] = Field(
        description="Arguments, valid against the tool's JSON Schema. An optional argument "
        "given as null is taken as not given."
    )
    session_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=SESSION_ID_PATTERN,
        description="Your agent run; rounds are counted per session. Printable: no control "
        "characters, no invisible or direction-changing ones.",
    )
    # Any JSON here: what is wrong with a user is refused (and audited) by intake, with the
    # path of the problem, as invalid_end_user.
    on_behalf_of: Any = Field(
        default="",
        description="The end user the agent acts for: their id, or {id, roles} (roles only "
        "from an agent an admin trusts to assert them). See docs/end-users.md.",
        json_schema_extra={
            "oneOf": [
                {"type": "string", "maxLength": 150, "pattern": USER_ID_PATTERN},
                {
                    "type": "object",
                    "properties": {
                        "id": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 150,
                            "pattern": USER_ID_PATTERN,
                        },
                        "roles": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 64,
                                "pattern": ROLE_PATTERN,
                            },
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
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=CALLBACK_URL_PATTERN,
        description="Where to POST the signed webhooks of the call (Standard Webhooks).",
    )

    @field_validator("callback_url")
    @classmethod
    def _is_a_url(cls, value: str | None) -> str | None:
        if value is not None:
            AnyHttpUrl(value)  # raises ValueError for what the pattern let through
        return value

    @field_validator("session_id")
    @classmethod
    def _no_hidden_session_id(cls, value: str) -> str:
        # The pattern (a JSON Schema's, without the "u" flag) says the BMP's characters only:
        # Unicode tags and the other format characters beyond it are refused here.
        if not is_visible_id(value):
            raise ValueError("holds a character a reader cannot see")
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
    by: Literal["reviewers", "policy_rule", "standing_approval"] | None = Field(
        default=None,
        description="Who let an approved call run: its reviewers, a policy rule, or a "
        "reviewer's standing approval.",
    )


STATUSES = ["received", "pending", "approved", "executing", "succeeded", "failed",
            "unknown", "rejected", "expired", "cancelled"]  # fmt: skip
RISKS = ["read", "write", "destructive"]


class ToolCallOut(Schema):
    id: UUID
    tool: str
    risk: str = Field(json_schema_extra={"enum": list[Any](RISKS)})
    status: str = Field(json_schema_extra={"enum": list[Any](STATUSES)})
    session_id: str
    status_url: str = Field(json_schema_extra={"format": "uri"})
    created_at: datetime
    expires_at: datetime | None = None
    approvals_required: int
    approvals: int
    decision: DecisionOut | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    needs_attention: bool = False
    arguments_edited: bool = Field(
        default=False,
        description="A reviewer corrected the arguments before approving; `arguments` are "
        "the ones that ran.",
    )
    arguments: dict[str, Any] | None = Field(
        default=None, description="The corrected arguments (only when `arguments_edited`)."
    )
