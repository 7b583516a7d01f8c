"""Typed errors: one class per API error code, and one per way a call can end badly."""

from __future__ import annotations

from typing import Any


class CountersignError(Exception):
    """Base of every error the client raises."""


class ApiError(CountersignError):
    """The API answered with ``{"error": {...}}``; subclasses name the code."""

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
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.suggestion = suggestion
        self.retryable = retryable
        self.details = details
        self.retry_after = retry_after

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


class ToolDisabled(ApiError):
    code = "tool_disabled"


class InvalidArguments(ApiError):
    """``details`` lists ``{"path", "message", "validator"}`` for every problem."""

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
        ToolDisabled,
        InvalidArguments,
        IdempotencyKeyRequired,
        IdempotencyKeyReused,
        IdempotencyKeyInUse,
        RateLimited,
        MaxRoundsExceeded,
        CircuitOpen,
        Unavailable,
        Timeout,
        ToolFailed,
        ReadAbandoned,
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
    received: run the same step again; its stored Idempotency-Key makes that safe."""


class CallEnded(CountersignError):
    """The call reached a terminal state other than ``succeeded``."""

    def __init__(self, call: dict[str, Any], message: str):
        super().__init__(message)
        self.call = call
        self.call_id = call.get("id")


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


class WaitTimeout(CountersignError):
    """The call was still not finished when the caller's wait ran out; wait again later."""

    def __init__(self, call: dict[str, Any]):
        super().__init__(f"call {call.get('id')} is still {call.get('status')}")
        self.call = call


def from_response(status: int, body: Any, headers: Any) -> ApiError:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ApiError(status=status, code="http_error", message=f"HTTP {status}")
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
    )
