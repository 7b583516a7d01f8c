from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from tools_registry.models import Agent, Tool
from tools_registry.policy import Risk


class Status(models.TextChoices):
    RECEIVED = "received", "Received"
    PENDING = "pending", "Pending approval"
    APPROVED = "approved", "Approved"
    EXECUTING = "executing", "Executing"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    UNKNOWN = "unknown", "Outcome unknown"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}
)


class ToolCall(models.Model):
    """One tool call an agent asked for, through its whole lifecycle.

    ``status`` is assigned only by ``approvals.services``; see ``approvals.transitions``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="calls")
    tool = models.ForeignKey(Tool, on_delete=models.PROTECT, related_name="calls")
    # Snapshots taken at intake: what the agent asked for, under which definition.
    tool_version = models.CharField(max_length=16)
    risk = models.CharField(max_length=16, choices=Risk.choices)
    arguments = models.JSONField()
    # SHA-256 of canonical (tool name, tool version, arguments): approvals bind to it.
    arguments_hash = models.CharField(max_length=64)
    session_id = models.CharField(max_length=128)
    on_behalf_of = models.CharField(max_length=150, blank=True)
    reasoning = models.TextField(blank=True)
    token_cost = models.JSONField(null=True, blank=True)
    callback_url = models.URLField(max_length=2048, blank=True)
    # The agent's Idempotency-Key for the request that created this call.
    request_key = models.CharField(max_length=255)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    approvals_required = models.PositiveSmallIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)

    # Executor bookkeeping (the claim/lease/fence protocol, see approvals.executor).
    fence = models.PositiveIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)

    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # Set when a person must look at the call: unknown outcome, failed destructive call.
    needs_attention = models.BooleanField(default=False)
    attention_reason = models.CharField(max_length=200, blank=True)
    # Reviewer notifications, each sent once (approvals.notifications claims them here).
    reviewers_notified_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "request_key"], name="call_unique_request_key"
            ),
        ]
        indexes = [
            # The reviewer queue reads only pending calls; keep that index small.
            models.Index(
                fields=["tool", "created_at", "id"],
                condition=models.Q(status="pending"),
                name="call_pending_by_tool_idx",
            ),
            models.Index(
                fields=["created_at", "id"],
                condition=models.Q(status="pending"),
                name="call_pending_idx",
            ),
            # The queue's filters by agent, session and expiry stay index scans at any depth.
            models.Index(
                fields=["agent", "created_at", "id"],
                condition=models.Q(status="pending"),
                name="call_pending_by_agent_idx",
            ),
            models.Index(
                fields=["session_id", "created_at", "id"],
                condition=models.Q(status="pending"),
                name="call_pending_by_session_idx",
            ),
            models.Index(
                fields=["expires_at"],
                condition=models.Q(status="pending"),
                name="call_pending_expiry_idx",
            ),
            # What the notification sweep still has to send: near-empty in steady state.
            models.Index(
                fields=["created_at"],
                condition=models.Q(status="pending", reviewers_notified_at__isnull=True),
                name="call_pending_unnotified_idx",
            ),
            models.Index(
                fields=["tool", "created_at"],
                condition=models.Q(status="pending", reminded_at__isnull=True),
                name="call_pending_unreminded_idx",
            ),
            # The abandoned-read sweep: a read is received only for moments.
            models.Index(
                fields=["created_at"],
                condition=models.Q(status="received"),
                name="call_received_idx",
            ),
            models.Index(
                fields=["lease_until"],
                condition=models.Q(status="executing"),
                name="call_executing_lease_idx",
            ),
            models.Index(
                fields=["enqueued_at"],
                condition=models.Q(status="approved"),
                name="call_approved_idx",
            ),
            models.Index(
                fields=["created_at"],
                condition=models.Q(needs_attention=True),
                name="call_attention_idx",
            ),
            # The reconciliation sweep reads unknown calls, least recently checked first.
            models.Index(
                fields=["updated_at"],
                condition=models.Q(status="unknown"),
                name="call_unknown_idx",
            ),
            models.Index(fields=["agent", "session_id", "created_at"], name="call_session_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.tool.name} call {self.pk}"

    @property
    def execution_key(self) -> str:
        """The idempotency key handed to the downstream: one per call, never a new one."""
        return f"countersign-{self.pk}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Verdict(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class Decision(models.Model):
    """One reviewer's verdict on one call, bound to exactly what they were shown."""

    call = models.ForeignKey(ToolCall, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    verdict = models.CharField(max_length=8, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    arguments_hash = models.CharField(max_length=64)
    policy_version = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["call", "reviewer"], name="decision_one_per_reviewer"),
        ]

    def __str__(self) -> str:
        return f"{self.verdict} by {self.reviewer} on {self.call_id}"


class AgentSession(models.Model):
    """One run of an agent, identified by the agent's session_id; counts tool-call rounds."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sessions")
    session_id = models.CharField(max_length=128)
    rounds = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    last_call_at = models.DateTimeField(default=timezone.now)

    class Meta:
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

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
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
        constraints = [
            models.UniqueConstraint(fields=["agent", "key"], name="idempotency_unique_key"),
        ]

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

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(state="pending"),
                name="webhook_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} of {self.call_id} ({self.state})"


class WebhookAttempt(models.Model):
    """One POST of a webhook delivery and what the receiver answered."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    response_excerpt = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number"], name="webhook_attempt_unique_number"
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"
