"""The sandbox payments provider's HTTP API, called by the issue_refund tool."""

from __future__ import annotations

import hmac
import json

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from sandbox import faults, payments


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _authorized(request: HttpRequest) -> bool:
    """The caller presents the sandbox's API key, as a payment provider would require."""
    expected = f"Bearer {settings.SANDBOX_PAYMENTS_KEY}"
    return hmac.compare_digest(request.headers.get("Authorization", ""), expected)


@csrf_exempt  # machine to machine: authenticated by the API key, not a browser session
@require_POST
def create_refund(request: HttpRequest) -> JsonResponse:
    if not _authorized(request):
        return _error(401, "not_authenticated", "Send the API key as a bearer token.")
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key or len(key) > 255:
        return _error(400, "idempotency_key_required", "Send an Idempotency-Key header.")
    try:
        body = json.loads(request.body)
        payment_id = str(body["payment_id"])
        amount_cents = int(body["amount_cents"])
        currency = str(body["currency"])
        reason = str(body.get("reason", ""))[:500]
    except (ValueError, KeyError, TypeError):
        return _error(
            400, "invalid_request", "Expected payment_id, amount_cents, currency and reason."
        )
    if amount_cents <= 0:
        return _error(400, "invalid_request", "amount_cents must be positive.")
    # Fault injection: a slow provider, or one that hangs before or after the refund.
    tag = request.headers.get(faults.TAG_HEADER, "")
    faults.checkpoint(tool="issue_refund", point=faults.Point.BEFORE_EFFECT, tag=tag)
    try:
        refund, replayed = payments.refund(
            key=key,
            payment_id=payment_id,
            amount_cents=amount_cents,
            currency=currency,
            reason=reason,
        )
    except payments.RefundRefused as exc:
        status = {"amount_too_large": 402, "idempotency_key_reused": 422}.get(exc.code, 400)
        return _error(status, exc.code, exc.message)
    faults.checkpoint(tool="issue_refund", point=faults.Point.AFTER_EFFECT, tag=tag)
    response = JsonResponse(refund)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


@require_GET
def refund_by_key(request: HttpRequest, key: str) -> JsonResponse:
    if not _authorized(request):
        return _error(401, "not_authenticated", "Send the API key as a bearer token.")
    refund = payments.refund_for_key(key)
    if refund is None:
        return _error(404, "not_found", "No refund was made with this Idempotency-Key.")
    return JsonResponse(refund)


@require_GET
def payment(request: HttpRequest, payment_id: str) -> JsonResponse:
    if not _authorized(request):
        return _error(401, "not_authenticated", "Send the API key as a bearer token.")
    found = payments.payment(payment_id)
    if found is None:
        return _error(404, "not_found", f"No payment {payment_id}.")
    return JsonResponse(found)


@require_GET
def openapi_document(request: HttpRequest) -> JsonResponse:
    """The payments API described for machines: Countersign imports it as an upstream."""
    return JsonResponse(payments.OPENAPI)
