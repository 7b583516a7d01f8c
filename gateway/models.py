"""The agent-facing edge's own rows: sessions (rounds), idempotency keys, webhooks to agents.

These tables were created by the approvals app, before the edge became its own app; they
keep their names (``Meta.db_table``) so that a deployment moves to this layout without
copying a row.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from approvals.models import ToolCall
from tools_registry.models import Agent


class AgentSession(models.Model):
    """One run of an agent, identified by the agent's session_id; counts tool-call rounds."""

    # Indexed by the unique constraint below, which starts with it; an index of its own would
    # be one more write per row, and the plan some lookups took to scan all the agent's rows.
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, related_name="sessions", db_index=False
    )
    session_id = models.CharField(max_length=128)
    rounds = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    last_call_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "approvals_agentsession"
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "session_id"], name="session_unique_per_agent"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent.name}/{self.session_id}"


class IdempotencyRecord(models.Model):
    """The stored answer to one (agent, Idempotency-Key), replayed for repeats of the request."""

    class State(models.TextChoices):
        IN_FLIGHT = "in_flight"
        COMPLETE = "complete"

    # Indexed by the unique constraint below, which starts with it; an index of its own would
    # be one more write per row, and the plan some lookups took to scan all the agent's rows.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_FLIGHT)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    call = models.ForeignKey(
        ToolCall, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # An in-flight record older than this belongs to a request that died; it may be taken over.
    locked_until = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "approvals_idempotencyrecord"
        constraints = [
            models.UniqueConstraint(fields=["agent", "key"], name="idempotency_unique_key"),
        ]
        # The retention sweep finds the records past IDEMPOTENCY_KEY_TTL by age.
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.agent_id}:{self.key}"


class WebhookDelivery(models.Model):
    """One terminal state of one call, POSTed to the agent's ``callback_url`` until accepted.

    Written in the transaction that changed the call (an outbox), so no committed terminal
    state goes untold. ``body`` is the exact JSON sent on every attempt; each attempt signs
    it afresh with its own timestamp. Attempts are claimed with a lease and a conditional
    UPDATE, so a Celery task and the sweep never send the same attempt twice.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Gave up"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call = models.ForeignKey(ToolCall, on_delete=models.CASCADE, related_name="webhooks")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    url = models.URLField(max_length=2048)
    event = models.CharField(max_length=40)
    body = models.TextField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # Set while an attempt runs; an attempt whose worker died is taken over after it.
    lease_until = models.DateTimeField(null=True, blank=True)
    # When a task was last sent for the due attempt; the sweep re-sends lost ones.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # When it was delivered or given up; ``WEBHOOK_RETENTION_SECONDS`` after it, the
    # retention sweep deletes it with its attempts (its body holds the call's result). Null
    # while pending, and on the deliveries that ended before the column was added.
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "approvals_webhookdelivery"
        ordering = ["created_at"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(state="pending"),
                name="webhook_due_idx",
            ),
            # The retention sweep's: ended deliveries only (it never reads pending ones).
            # ``next_attempt_at`` dates the ones that ended before ``ended_at`` was added.
            models.Index(
                fields=["ended_at", "next_attempt_at"],
                condition=~models.Q(state="pending"),
                name="webhook_ended_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} of {self.call_id} ({self.state})"


class WebhookAttempt(models.Model):
    """One POST of a webhook delivery and what the receiver answered."""

    # Indexed by the unique constraint below, which starts with it; an index of its own would
    # be one more write per row, and the plan some lookups took to scan all the delivery's rows.
    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log", db_index=False
    )
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    response_excerpt = models.CharField(max_length=500, blank=True)

    class Meta:
        db_table = "approvals_webhookattempt"
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number"], name="webhook_attempt_unique_number"
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"


class McpSession(models.Model):
    """One MCP client's session, opened by its ``initialize`` and named by the
    ``Mcp-Session-Id`` it was given; closed by its ``DELETE``.

    The MCP endpoint keeps no state in memory (any process may answer any request), so the
    session lives here: what the client said of itself, for the audit trail of every call
    it makes, and the agent session its calls count their rounds in.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    client_name = models.CharField(max_length=100, blank=True)
    client_version = models.CharField(max_length=50, blank=True)
    protocol_version = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    # Written at most once a minute, so that using a session is not a write per request.
    last_seen_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.client_name or 'MCP client'} session {self.pk}"

    @property
    def client(self) -> str:
        """``name/version`` as the client gave them."""
        return "/".join(part for part in (self.client_name, self.client_version) if part)
