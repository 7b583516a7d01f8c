"""The HTTP answer an agent gets for a call, and that its Idempotency-Key replays."""

from __future__ import annotations

from approvals import errors, selectors
from approvals.idempotency import StoredResponse
from approvals.models import Status, ToolCall
from approvals.services.common import CANNOT_RUN

PENDING_RETRY_AFTER_SECONDS = 5


def respond_with(call: ToolCall) -> StoredResponse:
    """The HTTP answer for a call in its current state."""
    body = selectors.represent_call(call)
    if call.status == Status.PENDING:
        return StoredResponse(
            status=202,
            body=body,
            headers={
                "Retry-After": str(PENDING_RETRY_AFTER_SECONDS),
                "Location": body["status_url"],
            },
        )
    if call.status == Status.FAILED and call.risk == "read":
        error = call.error or {}
        if error.get("code") == "timeout":
            api_error = errors.timeout(error.get("message", ""))
        elif error.get("code") == "abandoned":
            api_error = errors.read_abandoned(error.get("message", ""))
        elif error.get("code") in CANNOT_RUN:
            api_error = errors.cannot_run(error["code"], error.get("message", ""))
        else:
            api_error = errors.tool_failed(error.get("message", "The tool failed."))
        return StoredResponse(status=api_error.status, body={**api_error.body(), "call": body})
    return StoredResponse(status=200, body=body)
