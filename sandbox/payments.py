"""The sandbox payments provider's refund logic (Stripe-like: one refund per Idempotency-Key)."""

from __future__ import annotations

import secrets
from typing import Any

from django.db import transaction
from django.db.models import F

from sandbox import effects
from sandbox.models import Payment, Refund


class RefundRefused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def refund(
    *, key: str, payment_id: str, amount_cents: int, currency: str, reason: str
) -> tuple[dict[str, Any], bool]:
    """Refund once per key; a repeat returns the first refund (and says it is a replay)."""

    def make_refund() -> dict[str, Any]:
        payment = Payment.objects.select_for_update().filter(payment_id=payment_id).first()
        if payment is None:
            raise RefundRefused("payment_not_found", f"No payment {payment_id}.")
        if currency != payment.currency:
            raise RefundRefused(
                "currency_mismatch", f"Payment {payment_id} is in {payment.currency}."
            )
        if amount_cents > payment.amount_cents - payment.refunded_cents:
            raise RefundRefused(
                "amount_too_large", "The refund is larger than what is left of the payment."
            )
        Payment.objects.filter(pk=payment.pk).update(
            refunded_cents=F("refunded_cents") + amount_cents
        )
        created = Refund.objects.create(
            refund_id=f"re_{secrets.token_hex(8)}",
            payment=payment,
            amount_cents=amount_cents,
            currency=currency,
            reason=reason,
            idempotency_key=key,
        )
        return created.as_dict()

    with transaction.atomic():
        result, replayed = effects.apply_once(tool="issue_refund", key=key, effect=make_refund)
    asked = {"payment_id": payment_id, "amount_cents": amount_cents, "currency": currency}
    if replayed and {name: result.get(name) for name in asked} != asked:
        # As at Stripe: a key stands for one request; another request under it is refused,
        # never answered with the first request's refund.
        raise RefundRefused(
            "idempotency_key_reused", "This Idempotency-Key was used for a different refund."
        )
    return result, replayed


def refund_for_key(key: str) -> dict[str, Any] | None:
    found = Refund.objects.select_related("payment").filter(idempotency_key=key).first()
    return found.as_dict() if found else None


def payment(payment_id: str) -> dict[str, Any] | None:
    found = Payment.objects.filter(payment_id=payment_id).first()
    if found is None:
        return None
    return {
        "payment_id": found.payment_id,
        "amount_cents": found.amount_cents,
        "refunded_cents": found.refunded_cents,
        "currency": found.currency,
    }


_ERROR = {
    "description": "Refused",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            }
        }
    },
}
_PAYMENT_ID = {"type": "string", "pattern": "^pay_[0-9a-z]{4,24}$", "maxLength": 28}

# The API as an OpenAPI 3.1 document (served at payments/v1/openapi.json). Its refund
# operation names the lookup that reconciliation asks with a call's idempotency key.
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Sandbox payments", "version": "1"},
    "servers": [{"url": "."}],
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Refund": {
                "type": "object",
                "properties": {
                    "refund_id": {"type": "string"},
                    "payment_id": {"type": "string"},
                    "amount_cents": {"type": "integer"},
                    "currency": {"type": "string"},
                    "status": {"type": "string"},
                },
            },
            "RefundRequest": {
                "type": "object",
                "properties": {
                    "payment_id": {**_PAYMENT_ID, "description": "The payment to refund."},
                    "amount_cents": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 1000000,
                        "description": "Amount to refund, in cents.",
                    },
                    "currency": {"type": "string", "enum": ["usd", "eur", "gbp"]},
                    "reason": {"type": "string", "minLength": 1, "maxLength": 500},
                },
                "required": ["payment_id", "amount_cents", "currency", "reason"],
            },
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/refunds": {
            "post": {
                "operationId": "create_refund",
                "summary": "Refund part or all of a card payment.",
                "description": "Money leaves the business; a refund cannot be undone. One "
                "refund per Idempotency-Key.",
                "x-countersign-lookup": "get_refund_by_key",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "One refund per key.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/RefundRequest"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The refund",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Refund"}}
                        },
                    },
                    "400": _ERROR,
                    "402": _ERROR,
                },
            }
        },
        "/refunds/by-key/{key}": {
            "get": {
                "operationId": "get_refund_by_key",
                "summary": "The refund made with an Idempotency-Key, if any.",
                "parameters": [
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "The refund"}, "404": _ERROR},
            }
        },
        "/payments/{payment_id}": {
            "get": {
                "operationId": "get_payment",
                "summary": "A payment: amount, currency and what was already refunded.",
                "parameters": [
                    {"name": "payment_id", "in": "path", "required": True, "schema": _PAYMENT_ID}
                ],
                "responses": {"200": {"description": "The payment"}, "404": _ERROR},
            }
        },
    },
}
