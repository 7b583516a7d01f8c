"""The HTTP answer an agent gets for a call, and that its Idempotency-Key replays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.urls import reverse

from approvals.guards import CANNOT_RUN, approvals_now
from approvals.models import Status, ToolCall, Verdict
from approvals.services.calls import ABANDONED
from gateway import errors
from tools_registry.policy import Risk

PENDING_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    # The call the answer was made from, as this request has it in hand; never stored (an
    # answer read back from the key's record has none). MCP builds its answer from it
    # instead of reading the call again.
    call: ToolCall | None = field(default=None, compare=False, repr=False)


def status_url(call_id: UUID) -> str:
    return settings.PUBLIC_URL + reverse("api:get_tool_call", kwargs={"call_id": call_id})


def represent_call(call: ToolCall) -> dict[str, Any]:
    """What an agent sees of its call: state, decision, result or error."""
    decisions = list(call.decisions.all())
    approvals = approvals_now(call, decisions, getattr(call, "approval_count", None))
    decision = None
    if call.status == Status.REJECTED:
        veto = next((d for d in decisions if d.verdict == Verdict.REJECT), None)
        if veto is not None:
            decision = {
                "verdict": "reject",
                "comment": veto.comment,
                "decided_at": veto.created_at.isoformat(),
            }
    elif call.decided_at and call.status not in (Status.PENDING, Status.EXPIRED, Status.CANCELLED):
        comments = "; ".join(d.comment for d in decisions if d.comment)
        decision = {
            "verdict": "approve",
            "comment": comments,
            "decided_at": call.decided_at.isoformat(),
            "by": approved_by(call),
        }
    return {
        "id": str(call.pk),
        "tool": call.tool.name,
        "risk": call.risk,
        "status": call.status,
        "session_id": call.session_id,
        "status_url": status_url(call.pk),
        "created_at": call.created_at.isoformat(),
        "expires_at": call.expires_at.isoformat() if call.expires_at else None,
        "approvals_required": call.approvals_required,
        "approvals": approvals,
        "decision": decision,
        "result": call.result,
        "error": call.error,
        "needs_attention": call.needs_attention,
        # A reviewer corrected the arguments before approving: these ran, not the agent's.
        "arguments_edited": call.arguments_edited,
        **({"arguments": call.arguments} if call.arguments_edited else {}),
    }


def approved_by(call: ToolCall) -> str:
    """Who let the call run: its reviewers, a policy rule, or a standing approval."""
    if call.standing_approval_id is not None:
        return "standing_approval"
    # A corrected call matching an approving rule was still let through by the reviewer
    # whose approval made the correction.
    if ((call.policy or {}).get("rule") or {}).get("then") == "approve" and not (
        call.arguments_edited
    ):
        return "policy_rule"
    return "reviewers"


def respond_with(call: ToolCall, *, submitted: bool = False) -> StoredResponse:
    """The HTTP answer for a call in its current state. ``submitted``: the answer to the
    request that created it, where a call approved at once by a rule or a standing approval
    is, like a pending one, accepted and not yet done."""
    body = represent_call(call)
    if call.status == Status.PENDING or (submitted and not call.is_terminal):
        return StoredResponse(
            status=202,
            body=body,
            headers={
                "Retry-After": str(PENDING_RETRY_AFTER_SECONDS),
                "Location": body["status_url"],
            },
            call=call,
        )
    if call.status == Status.FAILED and call.risk == Risk.READ:
        api_error = failure(call.error or {})
        return StoredResponse(
            status=api_error.status,
            body={**api_error.body(), "call": body},
            headers=api_error.headers,  # an upstream's wait (tool_failed's Retry-After)
            call=call,
        )
    return StoredResponse(status=200, body=body, call=call)


def failure(error: dict[str, Any]) -> errors.ApiError:
    """Why a failed call has no result, as the API says it: from the call's stored error
    (a timeout, a read abandoned, a call refused at its claim, or the tool's own refusal)."""
    code = error.get("code", "handler_error")
    if code == "timeout":
        return errors.timeout(error.get("message", ""))
    if code == ABANDONED:
        return errors.read_abandoned(error.get("message", ""))
    if code in CANNOT_RUN:
        return errors.cannot_run(code, error.get("message", ""))
    return errors.tool_failed(
        error.get("message", "The tool failed."),
        tool_code=code,
        retry_after=error.get("retry_after"),
        # A handler that raised something else than ToolFailed (handler_error) failed in a
        # way another try may not; so did a read that outlived its lease (lease_expired:
        # taken away from its silent worker): no tool said no to either.
        retryable=error.get("retryable", code in ("handler_error", "lease_expired")),
    )
