"""Typed errors: one class per API error code, and one per way a call can end badly."""

from __future__ import annotations

from functools import partial
from typing import Any


class CountersignError(Exception):
    """Base of every error the client raises."""


class ApiError(CountersignError):
    """The API answered with ``{"error": {...}}``; subclasses name the code. ``body`` is the
    whole answer (its JSON, or its text when it was not JSON)."""

    code = "error"

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        suggestion: str = "",
        retryable: bool = False,
        details: Any = None,
        retry_after: float | None = None,
        body: Any = None,
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.suggestion = suggestion
        self.retryable = retryable
        self.details = details
        self.retry_after = retry_after
        self.body = body

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (a process pool, a task queue): rebuilt from its keyword-only arguments,
        # where the default rebuilds from ``args`` and fails.
        fields = ("status", "code", "message", "suggestion", "retryable", "details")
        kwargs = {name: getattr(self, name) for name in fields}
        return (
            partial(type(self), **kwargs, retry_after=self.retry_after, body=self.body),
            (),
        )

    @property
    def call(self) -> dict[str, Any] | None:
        """The call the answer carries (a failed read's, with its id and error), else None."""
        call = self.body.get("call") if isinstance(self.body, dict) else None
        return call if isinstance(call, dict) else None

    @property
    def tool_code(self) -> str:
        """The tool's own code of a failure (``customer_not_found``), "" for other errors."""
        if isinstance(self.details, dict):
            return str(self.details.get("tool_code") or "")
        return ""


class NotAuthenticated(ApiError):
    code = "not_authenticated"


class InvalidRequest(ApiError):
    code = "invalid_request"


class BodyTooLarge(ApiError):
    code = "body_too_large"


class UnknownTool(ApiError):
    code = "unknown_tool"


class ToolNotAllowed(ApiError):
    code = "tool_not_allowed"


class ToolNotAllowedForUser(ApiError):
    """The agent may call the tool, but not for this end user: ``details`` has the user and
    ``roles_allowed``."""

    code = "tool_not_allowed_for_user"


class UserNotAllowed(ApiError):
    """An approved call did not run: the agent's role scopes no longer let the user it is
    for use the tool (the call's ``error``, as its status shows it)."""

    code = "user_not_allowed"


class ToolDisabled(ApiError):
    code = "tool_disabled"


class ToolVersionChanged(ApiError):
    """A read accepted just before its tool's definition changed did not run: fetch the
    tools again and call with a new step."""

    code = "tool_version_changed"


class AgentStopped(ApiError):
    """A person stopped this agent: make no more calls (``details["reason"]`` says why)."""

    code = "agent_stopped"


class AgentDisabled(ApiError):
    code = "agent_disabled"


class RefusedByPolicy(ApiError):
    """A policy rule of the tool refuses calls like this one; ``details`` names the rule."""

    code = "refused_by_policy"


class InvalidEndUser(ApiError):
    code = "invalid_end_user"


class RoleNotAssertable(ApiError):
    code = "role_not_assertable"


class UserTokenInvalid(ApiError):
    code = "user_token_invalid"


class IdentityProviderUnavailable(ApiError):
    code = "identity_provider_unavailable"


class InvalidArguments(ApiError):
    """``details`` lists ``{"path", "message", "validator"}`` for each problem, at most 50;
    ``body["error"]["problems_total"]`` says how many there are in all."""

    code = "invalid_arguments"


class IdempotencyKeyRequired(ApiError):
    code = "idempotency_key_required"


class IdempotencyKeyReused(ApiError):
    """The step's key was used before with different arguments: a new step needs a new name."""

    code = "idempotency_key_reused"


class IdempotencyKeyInUse(ApiError):
    code = "idempotency_key_in_use"


class RateLimited(ApiError):
    code = "rate_limited"


class MaxRoundsExceeded(ApiError):
    code = "max_rounds_exceeded"


class TooManyWaits(ApiError):
    code = "too_many_waits"


class CircuitOpen(ApiError):
    code = "circuit_open"


class Unavailable(ApiError):
    code = "unavailable"


class Timeout(ApiError):
    """A read timed out on every attempt (504, retryable)."""

    code = "timeout"


class ToolFailed(ApiError):
    """A read failed: the tool refused (422, ``retryable`` false: asking again gives the same
    answer) or failed transiently (502, ``retryable``). ``tool_code`` is the tool's code."""

    code = "tool_failed"


class ReadAbandoned(ApiError):
    code = "read_abandoned"


class ResultNotAsDeclared(ApiError):
    """The tool ran, but its result does not match its declared output schema: the result
    is in ``call``; do not run the tool again for it."""

    code = "result_not_as_declared"


class IdempotencyKeyExpired(ApiError):
    code = "idempotency_key_expired"


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"


class NotFound(ApiError):
    code = "not_found"


class MethodNotAllowed(ApiError):
    code = "method_not_allowed"


class InternalError(ApiError):
    code = "internal_error"


class CallNotFound(ApiError):
    code = "call_not_found"


class InvalidState(ApiError):
    code = "invalid_state"


class RetryNotAllowed(ApiError):
    code = "retry_not_allowed"


ERRORS_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        NotAuthenticated,
        InvalidRequest,
        BodyTooLarge,
        UnknownTool,
        ToolNotAllowed,
        ToolNotAllowedForUser,
        UserNotAllowed,
        ToolDisabled,
        ToolVersionChanged,
        AgentStopped,
        AgentDisabled,
        RefusedByPolicy,
        InvalidEndUser,
        RoleNotAssertable,
        UserTokenInvalid,
        IdentityProviderUnavailable,
        InvalidArguments,
        IdempotencyKeyRequired,
        IdempotencyKeyReused,
        IdempotencyKeyInUse,
        RateLimited,
        MaxRoundsExceeded,
        TooManyWaits,
        CircuitOpen,
        Unavailable,
        Timeout,
        ToolFailed,
        ReadAbandoned,
        ResultNotAsDeclared,
        IdempotencyKeyExpired,
        UnsupportedMediaType,
        NotFound,
        MethodNotAllowed,
        InternalError,
        CallNotFound,
        InvalidState,
        RetryNotAllowed,
    )
}


class TransportError(CountersignError):
    """Countersign could not be reached or did not answer. A write may or may not have been
    received: run the same step again; its stored Idempotency-Key makes that safe.

    Raised by ``call``/``submit``, it names the step (``session_id``, ``step``, and the
    step's ``idempotency_key``): an unnamed call made again is the session's next step, with
    a new key, so resume with ``step=exc.step``."""

    def __init__(
        self,
        message: str,
        *,
        session_id: str | None = None,
        step: str | None = None,
        idempotency_key: str | None = None,
    ):
        super().__init__(message)
        self.session_id = session_id
        self.step = step
        self.idempotency_key = idempotency_key


class CallEnded(CountersignError):
    """The call reached a terminal state other than ``succeeded``."""

    def __init__(self, call: dict[str, Any], message: str):
        super().__init__(message)
        self.call = call
        self.call_id = call.get("id")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.call, str(self)))


class CallRejected(CallEnded):
    @property
    def comment(self) -> str:
        return ((self.call.get("decision") or {}).get("comment")) or ""


class CallExpired(CallEnded):
    pass


class CallCancelled(CallEnded):
    pass


class CallFailed(CallEnded):
    """The tool ran and failed. For a write, ``Countersign.retry(call_id)`` re-runs it with
    its original key; a destructive call goes to a person instead."""

    @property
    def error(self) -> dict[str, Any]:
        return self.call.get("error") or {}

    @property
    def tool_code(self) -> str:
        """The tool's own code of the failure (``refund_refused``)."""
        return str(self.error.get("code") or "")


# Where a call the wait gave up on stands, for a model, by its status as last read. A call
# still open is not always waiting for a person: it may be approved and running, or have run
# with an outcome being checked (``unknown``), and a model told "it has not run" tells its
# user so, or proposes the write again under a new step, a second call.
_STILL_OPEN = {
    "received": "was received and is about to run",
    "pending": "waits for a person's approval; it has not run yet",
    "approved": "was approved and waits to run; it has not run yet",
    "executing": "was approved and is running now",
    "unknown": "ran, but whether it took effect is not known yet: Countersign is checking "
    "with the downstream system, or a person will settle it. Do not tell the user it was "
    "done, nor that it was not",
}


class WaitTimeout(CountersignError):
    """The call was still not finished when the caller's wait ran out; wait again later.
    ``status`` is where it stood when last read, ``advice`` says so in words for a model."""

    def __init__(self, call: dict[str, Any]):
        super().__init__(f"call {call.get('id')} is still {call.get('status')}")
        self.call = call

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.call,))

    @property
    def status(self) -> str:
        return str(self.call.get("status") or "")

    @property
    def advice(self) -> str:
        """Where the call stands and what not to do, in words a model reads."""
        # A status this client does not know (a newer server's) is said as it is.
        stands = _STILL_OPEN.get(
            self.status, f"is {self.status or 'not finished'}; it has not ended"
        )
        return (
            f"The call {self.call.get('id')} {stands}. Do not propose it again (that would be "
            "a second call): tell the user where it stands."
        )


def from_response(status: int, body: Any, headers: Any) -> ApiError:
    """The typed error of an answer: ``body`` is its JSON, or its text if it was not JSON."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        message = f"HTTP {status}"
        location = headers.get("Location") if headers is not None else None
        if 300 <= status < 400 and location:
            message += f", a redirect to {location}: give the client the URL it points to"
        elif status < 300:
            message += " without Countersign's JSON: is the client's URL Countersign's?"
        return ApiError(status=status, code="http_error", message=message, body=body)
    retry_after = None
    raw = headers.get("Retry-After") if headers is not None else None
    if raw:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    code = str(error.get("code", "error"))
    cls = ERRORS_BY_CODE.get(code, ApiError)
    return cls(
        status=status,
        code=code,
        message=str(error.get("message", "")),
        suggestion=str(error.get("suggestion", "")),
        retryable=bool(error.get("retryable", False)),
        details=error.get("details"),
        retry_after=retry_after,
        body=body,
    )
