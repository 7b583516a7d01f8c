"""The agent API's errors: ``{"error": {"code", "message", "suggestion", "retryable"}}``.

Each factory names one situation an agent can meet, with the status code, a message for
logs and a suggestion that tells the agent what to do next.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        suggestion: str,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
        details: Any = None,
        fields: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.suggestion = suggestion
        self.retryable = retryable
        self.headers = headers or {}
        self.details = details
        # Fields of one code's own beside ``details`` (invalid_arguments' problems_total).
        self.fields = fields or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "suggestion": self.suggestion,
            "retryable": self.retryable,
        }
        if self.details is not None:
            error["details"] = self.details
        error.update(self.fields)
        return {"error": error}


def not_authenticated() -> ApiError:
    return ApiError(
        status=401,
        code="not_authenticated",
        message="Missing, unknown or revoked bearer token, or the agent is disabled.",
        suggestion="Send 'Authorization: Bearer <token>' with an active token of an enabled agent.",
        headers={"WWW-Authenticate": 'Bearer realm="countersign"'},
    )


def invalid_request(message: str, details: Any = None) -> ApiError:
    return ApiError(
        status=400,
        code="invalid_request",
        message=message,
        suggestion="Fix the request body as described and send it again.",
        details=details,
    )


def invalid_parameters(details: list[dict[str, str]]) -> ApiError:
    """A query or path parameter that does not parse (``?wait=120``, a call id that is no
    UUID): the agent is told which one, in the ``{path, message}`` details a body's problems
    are listed in, and not told to fix a body it did not send."""
    first = f" {details[0]['path']}: {details[0]['message']}" if details else ""
    return ApiError(
        status=400,
        code="invalid_request",
        message=f"A parameter of the request is not valid:{first}"[:300],
        suggestion="Fix the parameters listed in details and send the request again.",
        details=details,
    )


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        status=413,
        code="body_too_large",
        message=f"The request body is larger than {limit} bytes.",
        suggestion="Send smaller arguments; put large content somewhere the tool can fetch it.",
    )


def idempotency_key_required() -> ApiError:
    return ApiError(
        status=400,
        code="idempotency_key_required",
        message="The Idempotency-Key header is missing or empty.",
        suggestion="Create a unique key (a UUID) before the call, store it with your task, "
        "and send it as the Idempotency-Key header on this request and every retry of it.",
    )


def idempotency_key_reused() -> ApiError:
    return ApiError(
        status=422,
        code="idempotency_key_reused",
        message="This Idempotency-Key was already used with a different request body.",
        suggestion="Use a new key for a new call; reuse a key only to retry the identical request.",
    )


def idempotency_key_expired(call_id: Any = None) -> ApiError:
    """``call_id``: the call the key created, so that an agent that lost it reads that call
    instead of proposing the same effect again under a new key."""
    found = call_id is not None
    return ApiError(
        status=422,
        code="idempotency_key_expired",
        message="This Idempotency-Key was used longer ago than its answer is kept; the call "
        "it created still exists.",
        suggestion=(
            f"Read that call with GET /api/v1/tool-calls/{call_id}: it may have run already. "
            "Use a new key only for a new call."
            if found
            else "Read that call with GET /api/v1/tool-calls/{id} if you have its id; use a "
            "new key for a new call."
        ),
        details={"call_id": str(call_id)} if found else None,
    )


def idempotency_key_in_use() -> ApiError:
    return ApiError(
        status=409,
        code="idempotency_key_in_use",
        message="A request with this Idempotency-Key is still being processed.",
        suggestion="Wait a moment and retry with the same key to receive its result.",
        retryable=True,
        headers={"Retry-After": "1"},
    )


def unknown_tool(name: str) -> ApiError:
    return ApiError(
        status=404,
        code="unknown_tool",
        message=f"There is no tool named {name!r}.",
        suggestion="List your tools (GET /api/v1/tools, or MCP tools/list) and use one of their names.",
    )


def tool_not_allowed(name: str) -> ApiError:
    return ApiError(
        status=403,
        code="tool_not_allowed",
        message=f"This agent may not call {name!r}.",
        suggestion="Use one of the tools your tool list shows, or ask a tool admin to allow this one.",
    )


def tool_not_allowed_for_user(
    name: str, *, user: dict[str, Any], roles_allowed: list[str]
) -> ApiError:
    """The tool is on the agent's allowlist, but not in the scope of the end user's roles."""
    who = f"the user {user['id']!r}" if user.get("id") else "a call that names no user"
    roles = user.get("roles") or []
    if roles:
        who += f" (roles: {', '.join(roles)})"
    if roles_allowed:
        suggestion = (
            f"This tool needs the role {' or '.join(roles_allowed)}. Do not call it for this "
            "user: tell them it needs that role, or use a tool their tool list shows."
        )
    else:
        suggestion = (
            "No role may use this tool through this agent. Use a tool the user's tool list "
            "shows, or tell the user it is not available."
        )
    return ApiError(
        status=403,
        code="tool_not_allowed_for_user",
        message=f"{who[0].upper()}{who[1:]} may not use {name!r}.",
        suggestion=suggestion,
        details={"tool": name, "user": user, "roles_allowed": roles_allowed},
    )


def agent_stopped(reason: str, stopped_at: str = "") -> ApiError:
    return ApiError(
        status=403,
        code="agent_stopped",
        message=f"This agent was stopped by a person: {reason}",
        suggestion="Make no more calls. Tell the user you are paused and why; an "
        "administrator must resume the agent before it can act again.",
        details={"reason": reason, "stopped_at": stopped_at or None},
    )


def invalid_end_user(message: str, details: Any = None) -> ApiError:
    return ApiError(
        status=400,
        code="invalid_end_user",
        message=message,
        suggestion='Send on_behalf_of as the user\'s id, or as {"id": "...", "roles": [...]} '
        "with at most 32 role names; fix the listed path.",
        details=details,
    )


def role_not_assertable(message: str, details: Any = None) -> ApiError:
    return ApiError(
        status=403,
        code="role_not_assertable",
        message=message,
        suggestion="Send only the roles an admin allowed this agent to assert, or the user's "
        "token if the agent forwards tokens; do not retry with the same roles.",
        details=details,
    )


def user_token_invalid(message: str) -> ApiError:
    return ApiError(
        status=401,
        code="user_token_invalid",
        message=message,
        suggestion="Get a fresh token for the user from the identity provider and send the "
        "request again; do not act for the user without one.",
        # HTTP's 401 names its scheme; the realm tells it from the agent's own token.
        headers={
            "WWW-Authenticate": 'Bearer realm="end-user", error="invalid_token", '
            'error_description="the Countersign-User-Token was refused"'
        },
    )


def identity_provider_unavailable(message: str) -> ApiError:
    return ApiError(
        status=503,
        code="identity_provider_unavailable",
        message=message,
        suggestion="Retry in a few seconds with the same Idempotency-Key and token; "
        "nothing was done.",
        retryable=True,
        headers={"Retry-After": "5"},
    )


UNAVAILABLE_SUGGESTION = (
    "Do not retry; tell the user the action is unavailable or use another tool."
)


def tool_disabled(name: str) -> ApiError:
    return ApiError(
        status=403,
        code="tool_disabled",
        message=f"The tool {name!r} is disabled.",
        suggestion=UNAVAILABLE_SUGGESTION,
    )


def refused_by_policy(tool: str, message: str, *, rule: int, policy_version: int) -> ApiError:
    return ApiError(
        status=403,
        code="refused_by_policy",
        message=message,
        suggestion=f"A policy rule of {tool} refuses calls like this one; do not retry it as "
        "it is. Change what the call does, or ask a person to do it.",
        details={"rule": rule, "policy_version": policy_version},
    )


def cannot_run(code: str, message: str) -> ApiError:
    """A read refused at the claim: its tool or agent was switched off, or the tool changed,
    between intake and running it."""
    if code == "tool_version_changed":
        return ApiError(
            status=409,
            code=code,
            message=message,
            suggestion="Fetch the tool definitions again (GET /api/v1/tools, or MCP tools/list) and call with a new idempotency key.",
        )
    return ApiError(
        status=403,
        code=code,
        message=message,
        suggestion=UNAVAILABLE_SUGGESTION,
    )


def invalid_arguments(problems: list[dict[str, str]], *, total: int | None = None) -> ApiError:
    """``problems``: the first of them (``tools_registry.schemas.MAX_REPORTED`` at most);
    ``total``: how many there are in all (``problems_total``), when more than listed."""
    total = len(problems) if total is None else total
    message = "The arguments do not match the tool's JSON Schema"
    if total > len(problems):
        message += f": {total:,} problems, the first {len(problems)} listed"
    return ApiError(
        status=400,
        code="invalid_arguments",
        message=f"{message}.",
        suggestion="Correct the arguments at the listed paths and call again with a new Idempotency-Key.",
        details=problems,
        fields={"problems_total": total},
    )


def call_not_found() -> ApiError:
    return ApiError(
        status=404,
        code="call_not_found",
        message="No tool call with this id belongs to this agent.",
        suggestion="Use the id returned when the call was submitted.",
    )


def invalid_state(message: str, suggestion: str) -> ApiError:
    return ApiError(status=409, code="invalid_state", message=message, suggestion=suggestion)


def timeout(message: str = "The tool did not answer in time.") -> ApiError:
    return ApiError(
        status=504,
        code="timeout",
        message=message,
        suggestion="Try again later with a new Idempotency-Key; the read had no effect.",
        retryable=True,
    )


def read_abandoned(message: str) -> ApiError:
    return ApiError(
        status=503,
        code="read_abandoned",
        message=message,
        suggestion="Send the call again with a new Idempotency-Key; the read had no effect.",
        retryable=True,
    )


def tool_failed(
    message: str, *, tool_code: str, retryable: bool, retry_after: int | None = None
) -> ApiError:
    """A read whose tool failed. ``retryable`` is the tool's own verdict: a handler that
    refused the request (``ToolFailed(retryable=False)``: no such customer) answers the
    same again, so that is a 422; a transient failure (a dropped connection, an upstream
    that said "try later") is a 502 worth another try. ``details.tool_code`` is the code
    the tool gave; ``retry_after``, the wait its downstream asked for (an upstream's 429),
    is the 502's Retry-After."""
    if not retryable:
        return ApiError(
            status=422,
            code="tool_failed",
            message=message,
            suggestion="The tool refused this request and will answer the same again: read "
            "the message and tool_code, then correct the arguments or tell the user.",
            details={"tool_code": tool_code},
        )
    return ApiError(
        status=502,
        code="tool_failed",
        message=message,
        suggestion=(
            f"The tool's downstream asked for {retry_after} s: wait that long (Retry-After), "
            "then try again with a new Idempotency-Key."
            if retry_after is not None
            else "The failure was transient: try again later with a new Idempotency-Key."
        ),
        retryable=True,
        headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
        details={"tool_code": tool_code},
    )


def too_many_waits(limit: int) -> ApiError:
    return _too_many_waits(f"This agent already has {limit} requests waiting for calls to end.")


def waiting_threads_taken(threads: int) -> ApiError:
    if threads == 0:
        return _too_many_waits(
            "This server's web process serves one request at a time (WEB_THREADS=1): it "
            "keeps its thread for requests that do not wait, and lets none wait for calls "
            "to end."
        )
    return _too_many_waits(
        f"This server's {threads} threads for requests that wait for calls to end are all "
        "taken; its others are kept for requests that do not wait."
    )


def _too_many_waits(message: str) -> ApiError:
    return ApiError(
        status=429,
        code="too_many_waits",
        message=message,
        suggestion="Wait for fewer calls at once (a GET without wait, or MCP tasks/get, "
        "reads a call without waiting), or try again after Retry-After, when one of the "
        "waits has ended.",
        retryable=True,
        headers={"Retry-After": "5"},
    )


def result_not_as_declared() -> ApiError:
    return ApiError(
        status=502,
        code="result_not_as_declared",
        message="The tool ran, but its result does not match the output schema it declares "
        "(cut short past Countersign's size limit, or changed upstream); the result is in "
        "'call'.",
        suggestion="Read the result from 'call' if you can use it; do not run the tool "
        "again for it.",
    )


def call_rejected(comment: str) -> ApiError:
    return ApiError(
        status=409,
        code="call_rejected",
        message=f"A reviewer rejected the call: {comment or 'no reason given'}",
        suggestion="Do not retry this call. Tell the user it was rejected and why, or "
        "propose something different.",
    )


def approval_expired() -> ApiError:
    return ApiError(
        status=409,
        code="approval_expired",
        message="Nobody approved the call before it expired; it did not run.",
        suggestion="Ask the user whether it is still wanted; a new call needs a new approval.",
    )


def call_cancelled() -> ApiError:
    return ApiError(
        status=409,
        code="call_cancelled",
        message="The call was cancelled before anyone approved it; it did not run.",
        suggestion="Nothing happened. Propose it again only if it is still wanted.",
    )


def max_rounds_exceeded(limit: int) -> ApiError:
    return ApiError(
        status=429,
        code="max_rounds_exceeded",
        message=f"This session already made its {limit} tool-call rounds.",
        suggestion="Stop calling tools in this session and give the user your answer, or start a new session.",
    )


def rate_limited(*, scope: str, limit: str, retry_after: int) -> ApiError:
    who = "this end user" if scope == "user" else "this agent"
    return ApiError(
        status=429,
        code="rate_limited",
        message=f"The tool's rate limit for {who} ({limit}) is used up.",
        suggestion=f"Wait {retry_after} s (Retry-After) and send the same request again with "
        "the same Idempotency-Key.",
        retryable=True,
        headers={"Retry-After": str(retry_after)},
        details={"scope": scope, "limit": limit},
    )


def circuit_open(name: str, *, retry_after: int) -> ApiError:
    return ApiError(
        status=503,
        code="circuit_open",
        message=f"The tool {name!r} failed repeatedly; Countersign stopped calling it for a while.",
        suggestion=f"Wait {retry_after} s (Retry-After) and retry with the same Idempotency-Key, "
        "or continue without this tool.",
        retryable=True,
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(message: str = "Countersign cannot reach a service it needs.") -> ApiError:
    return ApiError(
        status=503,
        code="unavailable",
        message=message,
        suggestion="Retry in a few seconds with the same Idempotency-Key.",
        retryable=True,
        headers={"Retry-After": "5"},
    )


def database_unavailable() -> ApiError:
    """PostgreSQL could not be reached, or dropped the request's connection (a restart, a
    failover, no pooled connection free within ``DB_POOL_TIMEOUT``). Its transaction was
    rolled back, or committed whole if the COMMIT was what got no answer: the same
    Idempotency-Key replays it either way."""
    return unavailable("Countersign's database cannot be reached, or dropped the request.")


def invalid_idempotency_key() -> ApiError:
    return ApiError(
        status=400,
        code="idempotency_key_required",
        message="The Idempotency-Key header must be 1 to 255 printable ASCII characters, "
        "without spaces at either end.",
        suggestion="Use a UUID as the key; store it with your task before the call.",
    )


def retry_not_allowed(message: str, *, new_call: bool = False) -> ApiError:
    """``new_call``: the call's approval no longer covers a re-run (a stop, its retries spent,
    its tool's policy changed), and a new call is the way, not a person's review."""
    return ApiError(
        status=409,
        code="retry_not_allowed",
        message=message,
        suggestion=(
            "If the effect is still wanted, make a new call (a new Idempotency-Key); it is "
            "screened and approved under the tool's current policy."
            if new_call
            else "A person decides what happens to this call; tell the user it needs review."
        ),
    )


def internal_error() -> ApiError:
    return ApiError(
        status=500,
        code="internal_error",
        message="Countersign failed to handle this request.",
        suggestion="Retry with the same Idempotency-Key; if it keeps failing, tell the operators.",
        retryable=True,
    )


# --- HTTP-level refusals under /api/ (gateway.http): the same shape as every other error ---


def not_found(path: str) -> ApiError:
    return ApiError(
        status=404,
        code="not_found",
        message=f"There is no API endpoint at {path[:200]}.",
        suggestion="Check the path against /api/v1/openapi.json.",
    )


def method_not_allowed(method: str, allowed: list[str]) -> ApiError:
    return ApiError(
        status=405,
        code="method_not_allowed",
        message=f"{method[:16]} is not allowed here; use {', '.join(allowed)}.",
        suggestion="Use one of the methods in the Allow header.",
        headers={"Allow": ", ".join(allowed)},
    )


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        status=415,
        code="unsupported_media_type",
        message=f"The body must be application/json, not {content_type[:100] or 'unnamed'}.",
        suggestion="Send the body as JSON with 'Content-Type: application/json'.",
    )
