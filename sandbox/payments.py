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
