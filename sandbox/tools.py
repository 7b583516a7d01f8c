"""The demo tools. Each acts on a sandbox system and passes its idempotency key downstream."""

from __future__ import annotations

from typing import Any

import httpx
from django.conf import settings
from django.db.models import Q

from core import tls
from sandbox import effects, faults
from sandbox.models import Customer, HelpArticle, OutboxMessage, Payment
from tools_registry.facts import Facts, Money
from tools_registry.policy import Risk
from tools_registry.registry import (
    Change,
    LookupResult,
    State,
    ToolContext,
    ToolFailed,
    tool,
)

JSON = dict[str, Any]

CUSTOMER_ID = {
    "type": "string",
    "description": "The customer's id, as get_customer returns it (for example cus_0001).",
    "pattern": "^cus_[0-9a-z]{4,24}$",
    "maxLength": 28,
}


@tool(
    name="search_docs",
    description="Search the help-centre articles by words in their title or body. Read only: changes nothing.",
    input_schema={
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "description": "Words to look for.",
                "minLength": 1,
                "maxLength": 200,
            },
            "limit": {
                "type": "integer",
                "description": "Most articles to return.",
                "minimum": 1,
                "maximum": 10,
                "default": 5,
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    risk=Risk.READ,
    open_world=False,
    output_schema={
        "type": "object",
        "properties": {
            "articles": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "slug": {"type": "string"},
                        "title": {"type": "string"},
                        "excerpt": {"type": "string"},
                    },
                    "required": ["slug", "title", "excerpt"],
                },
            },
            "count": {"type": "integer", "minimum": 0},
        },
        "required": ["articles", "count"],
    },
)
def search_docs(ctx: ToolContext, arguments: JSON) -> JSON:
    words = arguments["query"].split()[:8]
    matches = HelpArticle.objects.all()
    for word in words:
        matches = matches.filter(Q(title__icontains=word) | Q(body__icontains=word))
    articles = [
        {"slug": a.slug, "title": a.title, "excerpt": a.body[:240]}
        for a in matches.order_by("slug")[: arguments.get("limit", 5)]
    ]
    return {"articles": articles, "count": len(articles)}


@tool(
    name="get_customer",
    description="Fetch one customer's CRM record: name, e-mail, phone and plan. Read only: changes nothing.",
    input_schema={
        "type": "object",
        "properties": {"customer_id": CUSTOMER_ID},
        "required": ["customer_id"],
        "additionalProperties": False,
    },
    risk=Risk.READ,
    open_world=False,
    output_schema={
        "type": "object",
        "properties": {
            name: {"type": "string"} for name in ("customer_id", "name", "email", "phone", "plan")
        },
        "required": ["customer_id", "name", "email", "phone", "plan"],
    },
)
def get_customer(ctx: ToolContext, arguments: JSON) -> JSON:
    customer = Customer.objects.filter(customer_id=arguments["customer_id"]).first()
    if customer is None:
        raise ToolFailed(f"No customer {arguments['customer_id']}.", code="customer_not_found")
    return customer.as_dict()


@tool(
    name="send_email",
    description=(
        "Send an e-mail to one recipient from the support address. Side effect: the message is "
        "delivered and cannot be recalled or undone."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "to": {
                "type": "string",
                "format": "email",
                "description": "Recipient address.",
                "maxLength": 254,
            },
            "subject": {
                "type": "string",
                "description": "Subject line.",
                "minLength": 1,
                "maxLength": 200,
            },
            "body": {
                "type": "string",
                "description": "Plain-text message.",
                "minLength": 1,
                "maxLength": 10000,
            },
        },
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
    },
    risk=Risk.WRITE,
    honours_idempotency_key=True,
    facts=Facts(recipient="to"),
)
def send_email(ctx: ToolContext, arguments: JSON) -> JSON:
    faults.checkpoint(tool="send_email", point=faults.Point.HANDLER_START)

    def deliver() -> JSON:
        message = OutboxMessage.objects.create(
            to=arguments["to"],
            subject=arguments["subject"],
            body=arguments["body"],
            idempotency_key=ctx.idempotency_key,
        )
        return {"message_id": message.pk, "status": "sent", "sent_at": message.sent_at.isoformat()}

    return effects.deliver(tool="send_email", key=ctx.idempotency_key, effect=deliver)


send_email.lookup(effects.recorded("send_email"))


@send_email.preview
def _send_email_preview(arguments: JSON) -> str:
    return (
        f"Sends an e-mail to {arguments.get('to')} with the subject “{arguments.get('subject')}”."
    )


@tool(
    name="update_customer",
    description=(
        "Change fields of one customer's CRM record. Side effect: the old values are overwritten "
        "and cannot be restored by Countersign."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "customer_id": CUSTOMER_ID,
            "changes": {
                "type": "object",
                "description": "The fields to change and their new values.",
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "Full name.",
                        "minLength": 1,
                        "maxLength": 200,
                    },
                    "email": {
                        "type": "string",
                        "format": "email",
                        "description": "E-mail address.",
                        "maxLength": 254,
                    },
                    "phone": {"type": "string", "description": "Phone number.", "maxLength": 32},
                    "plan": {
                        "type": "string",
                        "description": "Subscription plan.",
                        "enum": ["free", "pro", "enterprise"],
                    },
                },
                "minProperties": 1,
                "additionalProperties": False,
            },
        },
        "required": ["customer_id", "changes"],
        "additionalProperties": False,
    },
    risk=Risk.WRITE,
    sensitive_fields=["changes.email", "changes.phone"],
    honours_idempotency_key=True,
    facts=Facts(target="customer_id", confirm="target"),
    # Overwrites the record's old values; setting the same values again changes nothing.
    overwrites=True,
    idempotent=True,
    open_world=False,
)
def update_customer(ctx: ToolContext, arguments: JSON) -> JSON:
    faults.checkpoint(tool="update_customer", point=faults.Point.HANDLER_START)

    def change() -> JSON:
        customer = (
            Customer.objects.select_for_update()
            .filter(customer_id=arguments["customer_id"])
            .first()
        )
        if customer is None:
            raise ToolFailed(f"No customer {arguments['customer_id']}.", code="customer_not_found")
        before = customer.as_dict()
        for field, value in arguments["changes"].items():
            setattr(customer, field, value)
        customer.save()
        return {
            "customer": customer.as_dict(),
            "changed": sorted(
                k for k in arguments["changes"] if before[k] != arguments["changes"][k]
            ),
        }

    return effects.deliver(tool="update_customer", key=ctx.idempotency_key, effect=change)


update_customer.lookup(effects.recorded("update_customer"))


@update_customer.preview
def _update_customer_preview(arguments: JSON) -> str:
    fields = ", ".join(sorted(arguments.get("changes", {})))
    return f"Overwrites {fields} of customer {arguments.get('customer_id')}."


@update_customer.current_state
def _update_customer_state(arguments: JSON) -> State:
    # The demo's CRM is a table beside Countersign; a real tool asks its CRM's API.
    customer = Customer.objects.filter(customer_id=arguments["customer_id"]).first()
    if customer is None:
        return State(
            title=f"No customer {arguments['customer_id']}",
            notes=("The record does not exist: the call would fail.",),
        )
    now = customer.as_dict()
    changes = arguments.get("changes", {})
    return State(
        title=f"Customer {customer.customer_id} ({customer.name})",
        rows=tuple(
            Change(
                field=name,
                now=now[name],
                after=changes.get(name, now[name]),
                changes=name in changes and changes[name] != now[name],
            )
            for name in ("name", "email", "phone", "plan")
        ),
    )


@tool(
    name="issue_refund",
    description=(
        "Refund part or all of a card payment through the payments provider. Side effect: money "
        "leaves the business; a refund cannot be undone."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "payment_id": {
                "type": "string",
                "description": "The payment to refund (for example pay_0001).",
                "pattern": "^pay_[0-9a-z]{4,24}$",
                "maxLength": 28,
            },
            "amount_cents": {
                "type": "integer",
                "description": "Amount to refund, in cents.",
                "minimum": 1,
                "maximum": 1000000,
            },
            "currency": {
                "type": "string",
                "description": "ISO currency code.",
                "enum": ["usd", "eur", "gbp"],
            },
            "reason": {
                "type": "string",
                "description": "Why the refund is due.",
                "minLength": 1,
                "maxLength": 500,
            },
        },
        "required": ["payment_id", "amount_cents", "currency", "reason"],
        "additionalProperties": False,
    },
    risk=Risk.WRITE,
    honours_idempotency_key=True,
    facts=Facts(amount="amount_cents", currency="currency", target="payment_id", confirm="amount"),
)
def issue_refund(ctx: ToolContext, arguments: JSON) -> JSON:
    faults.checkpoint(tool="issue_refund", point=faults.Point.HANDLER_START)
    headers = {
        "Idempotency-Key": ctx.idempotency_key,
        "Authorization": f"Bearer {settings.SANDBOX_PAYMENTS_KEY}",
    }
    if settings.SANDBOX_FAULTS and faults.current_tag():
        headers[faults.TAG_HEADER] = faults.current_tag()  # lets a fault target this worker
    # Called over HTTP with the key, exactly as a real payment provider would be.
    response = httpx.post(
        f"{settings.SANDBOX_PAYMENTS_URL}/refunds",
        json=arguments,
        headers=headers,
        timeout=ctx.timeout,
        verify=tls.context(),
    )
    if 400 <= response.status_code < 500:
        # The provider refused the request: no money moved.
        error = response.json().get("error", {}) if _is_json(response) else {}
        raise ToolFailed(
            error.get("message", f"payments API refused: HTTP {response.status_code}"),
            code="refund_refused",
        )
    response.raise_for_status()  # 5xx: the provider may or may not have refunded; unknown.
    return response.json()


@issue_refund.lookup
def _issue_refund_lookup(ctx: ToolContext) -> LookupResult:
    try:
        response = httpx.get(
            f"{settings.SANDBOX_PAYMENTS_URL}/refunds/by-key/{ctx.idempotency_key}",
            headers={"Authorization": f"Bearer {settings.SANDBOX_PAYMENTS_KEY}"},
            timeout=ctx.timeout,
            verify=tls.context(),
        )
    except httpx.HTTPError:
        return LookupResult.cannot_tell()
    if response.status_code == 404:
        return LookupResult.not_found()
    if response.status_code == 200:
        return LookupResult.found_with(response.json())
    return LookupResult.cannot_tell()


@issue_refund.preview
def _issue_refund_preview(arguments: JSON) -> str:
    amount = arguments.get("amount_cents", 0) / 100
    return f"Refunds {amount:.2f} {str(arguments.get('currency', '')).upper()} of payment {arguments.get('payment_id')}."


@issue_refund.current_state
def _issue_refund_state(arguments: JSON) -> State:
    # The sandbox's payments provider keeps its payments beside Countersign; a real tool
    # asks the provider's API (GET /payments/{id}).
    payment = Payment.objects.filter(payment_id=arguments["payment_id"]).first()
    if payment is None:
        return State(
            title=f"No payment {arguments['payment_id']}",
            notes=("The provider has no such payment: the refund would be refused.",),
        )
    currency = payment.currency.upper()
    refunded = payment.refunded_cents
    asked = int(arguments.get("amount_cents", 0))
    notes = []
    if str(arguments.get("currency", "")).upper() != currency:
        notes.append(
            f"The payment was made in {currency}, not {arguments.get('currency', '').upper()}."
        )
    if refunded + asked > payment.amount_cents:
        notes.append("The refund is more than what is left of the payment: it would be refused.")
    return State(
        title=f"Payment {payment.payment_id}",
        rows=(
            Change("charged", str(Money(payment.amount_cents, currency))),
            Change(
                "refunded",
                str(Money(refunded, currency)),
                str(Money(refunded + asked, currency)),
                changes=True,
            ),
            Change(
                "left to refund",
                str(Money(payment.amount_cents - refunded, currency)),
                str(Money(payment.amount_cents - refunded - asked, currency)),
                changes=True,
            ),
        ),
        notes=tuple(notes),
    )


@tool(
    name="delete_customer",
    description=(
        "Delete one customer's CRM record and everything stored with it. Side effect: the record "
        "is erased permanently; this cannot be undone."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "customer_id": CUSTOMER_ID,
            "reason": {
                "type": "string",
                "description": "Why the record must go.",
                "minLength": 1,
                "maxLength": 500,
            },
        },
        "required": ["customer_id", "reason"],
        "additionalProperties": False,
    },
    risk=Risk.DESTRUCTIVE,
    honours_idempotency_key=True,
    facts=Facts(target="customer_id", confirm="target"),
    # Deleting a customer that is already gone changes nothing more.
    idempotent=True,
    open_world=False,
)
def delete_customer(ctx: ToolContext, arguments: JSON) -> JSON:
    faults.checkpoint(tool="delete_customer", point=faults.Point.HANDLER_START)

    def erase() -> JSON:
        deleted, _ = Customer.objects.filter(customer_id=arguments["customer_id"]).delete()
        if not deleted:
            raise ToolFailed(f"No customer {arguments['customer_id']}.", code="customer_not_found")
        return {"customer_id": arguments["customer_id"], "deleted": True}

    return effects.deliver(tool="delete_customer", key=ctx.idempotency_key, effect=erase)


delete_customer.lookup(effects.recorded("delete_customer"))


@delete_customer.preview
def _delete_customer_preview(arguments: JSON) -> str:
    return f"Permanently erases customer {arguments.get('customer_id')}."


@delete_customer.current_state
def _delete_customer_state(arguments: JSON) -> State:
    customer = Customer.objects.filter(customer_id=arguments["customer_id"]).first()
    if customer is None:
        return State(
            title=f"No customer {arguments['customer_id']}",
            notes=("The record is already gone: the call would fail.",),
        )
    now = customer.as_dict()
    sent = OutboxMessage.objects.filter(to__iexact=customer.email).count()
    return State(
        title=f"Customer {customer.customer_id} ({customer.name})",
        rows=tuple(
            Change(field=name, now=now[name], after=None, changes=True)
            for name in ("name", "email", "phone", "plan")
        ),
        notes=(
            f"{sent} e-mail{'s' if sent != 1 else ''} sent to this customer stay in the outbox.",
            "Erased for good: Countersign cannot restore it.",
        ),
    )


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")
