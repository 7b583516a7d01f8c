"""Demo data of the sandbox systems (idempotent)."""

from __future__ import annotations

from sandbox.models import Customer, HelpArticle, Payment

ARTICLES = [
    (
        "reset-password",
        "Reset your password",
        "Open Settings, choose Security, then Reset password. A link arrives by e-mail within minutes.",
    ),
    (
        "refund-policy",
        "Refund policy",
        "Annual plans can be refunded within 30 days of payment. Monthly plans are refunded pro rata on request.",
    ),
    (
        "change-plan",
        "Change your plan",
        "Upgrade or downgrade from Billing. Upgrades apply at once; downgrades at the end of the period.",
    ),
    (
        "delete-account",
        "Delete your account",
        "Account deletion erases the customer record permanently. Export your data first.",
    ),
    (
        "invoices",
        "Download invoices",
        "Invoices are listed under Billing, Invoices, as PDF, for every payment.",
    ),
]

CUSTOMERS = [
    ("cus_0001", "Ada Lovelace", "ada@example.com", "+44 20 7946 0001", "pro"),
    ("cus_0002", "Grace Hopper", "grace@example.com", "+1 202 555 0142", "enterprise"),
    ("cus_0003", "Alan Turing", "alan@example.com", "+44 20 7946 0003", "free"),
    ("cus_0004", "Katherine Johnson", "katherine@example.com", "+1 757 555 0199", "pro"),
]

PAYMENTS = [
    ("pay_0001", 12000, "usd"),
    ("pay_0002", 4900, "eur"),
    ("pay_0003", 99000, "usd"),
    ("pay_0004", 2500, "gbp"),
]


def seed_sandbox() -> None:
    for slug, title, body in ARTICLES:
        HelpArticle.objects.update_or_create(slug=slug, defaults={"title": title, "body": body})
    for customer_id, name, email, phone, plan in CUSTOMERS:
        Customer.objects.get_or_create(
            customer_id=customer_id,
            defaults={"name": name, "email": email, "phone": phone, "plan": plan},
        )
    for payment_id, amount, currency in PAYMENTS:
        Payment.objects.get_or_create(
            payment_id=payment_id, defaults={"amount_cents": amount, "currency": currency}
        )
