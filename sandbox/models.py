"""Simulated external systems the demo tools act on: help centre, CRM, mail, payments.

Every sink records each effect with the idempotency key it was given (``Effect``) and
refuses a second effect for the same key, as a well-behaved downstream API does.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Effect(models.Model):
    """One side effect a sandbox system applied, keyed by the caller's idempotency key.

    ``deliveries`` counts every request that arrived with this key, the refused repeats
    included: the executor's tests read it to see whether a handler ran twice.
    """

    tool = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=255)
    at = models.DateTimeField(default=timezone.now)
    summary = models.JSONField(default=dict)
    deliveries = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tool", "idempotency_key"], name="effect_once_per_key"),
        ]

    def __str__(self) -> str:
        return f"{self.tool} {self.idempotency_key}"


class HelpArticle(models.Model):
    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    body = models.TextField()

    def __str__(self) -> str:
        return self.title


class Customer(models.Model):
    class Plan(models.TextChoices):
        FREE = "free"
        PRO = "pro"
        ENTERPRISE = "enterprise"

    customer_id = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    email = models.EmailField()
    phone = models.CharField(max_length=32, blank=True)
    plan = models.CharField(max_length=16, choices=Plan.choices, default=Plan.FREE)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.customer_id

    def as_dict(self) -> dict[str, str]:
        return {
            "customer_id": self.customer_id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "plan": self.plan,
        }


class OutboxMessage(models.Model):
    """An e-mail the sandbox mail system accepted for delivery."""

    to = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    idempotency_key = models.CharField(max_length=255, unique=True)
    sent_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"to {self.to}: {self.subject}"


class Payment(models.Model):
    payment_id = models.CharField(max_length=32, unique=True)
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    refunded_cents = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.payment_id


class Refund(models.Model):
    """A refund the sandbox payments API made; its Idempotency-Key is unique, as at Stripe."""

    refund_id = models.CharField(max_length=40, unique=True)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    reason = models.CharField(max_length=500, blank=True)
    idempotency_key = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.refund_id

    def as_dict(self) -> dict[str, object]:
        return {
            "refund_id": self.refund_id,
            "payment_id": self.payment.payment_id,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "status": "succeeded",
            "created_at": self.created_at.isoformat(),
        }


class SandboxFault(models.Model):
    """A failure the sandbox systems act out, for chaos tests and demonstrations.

    At a checkpoint (``sandbox.faults.checkpoint``) a matching fault is counted in ``hits``
    (committed at once, so a test can see that a process reached the point), then makes the
    process wait: ``delay_seconds`` (uniformly random up to it with ``random_delay``), or,
    with ``hold``, until the fault is released (``hold`` cleared or the row deleted), at
    most ``delay_seconds``. Only active when the ``SANDBOX_FAULTS`` setting is on.
    """

    class Point(models.TextChoices):
        # A demo handler was called; it has contacted no system yet.
        HANDLER_START = "handler_start", "Handler start"
        # The system received the request and has not applied the effect.
        BEFORE_EFFECT = "before_effect", "Before the effect"
        # The effect is committed; the answer has not gone back to the caller.
        AFTER_EFFECT = "after_effect", "After the effect"

    tool = models.CharField(max_length=64, blank=True, help_text="Empty: every tool.")
    point = models.CharField(max_length=16, choices=Point.choices)
    tag = models.CharField(
        max_length=64,
        blank=True,
        help_text="Only processes (or payments API requests) with this SANDBOX_FAULT_TAG.",
    )
    delay_seconds = models.FloatField(default=0)
    random_delay = models.BooleanField(default=False)
    hold = models.BooleanField(default=False)
    remaining = models.PositiveIntegerField(
        null=True, blank=True, help_text="How many more times it strikes; empty: always."
    )
    hits = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.point} {self.tool or '*'} {self.tag or ''}".strip()


class Ticket(models.Model):
    """A ticket of the sandbox ticketing system (served as an MCP server, sandbox.tickets)."""

    class State(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    ticket_id = models.CharField(max_length=32, unique=True)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.ticket_id

    def as_dict(self) -> dict[str, object]:
        return {
            "ticket_id": self.ticket_id,
            "title": self.title,
            "body": self.body,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
        }
