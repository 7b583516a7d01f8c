from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Coalesce
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


class Transport(models.TextChoices):
    """The door a call came in through; from then on it is the same call."""

    REST = "rest", "REST API"
    MCP = "mcp", "MCP"


TERMINAL_STATUSES = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}
)


class ToolCall(models.Model):
    """One tool call an agent asked for, through its whole lifecycle.

    ``status`` is written only by ``approvals.transitions.change``, the one door.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: call_unique_request_key and call_session_idx start with it. Every
    # index is written by every new call and by each status change (docs/benchmarks.md).
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="calls", db_index=False)
    tool = models.ForeignKey(Tool, on_delete=models.PROTECT, related_name="calls")
    # The agent's owner when the call was made: separation of duties keeps them from letting
    # it run even once the agent has changed hands (guards.conflict_of_interest). No index:
    # nothing looks calls up by it. Null for calls made before it was kept.
    agent_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    # Snapshots taken at intake: what the agent asked for, under which definition.
    tool_version = models.CharField(max_length=16)
    risk = models.CharField(max_length=16, choices=Risk.choices)
    arguments = models.JSONField()
    # SHA-256 of canonical (tool name, tool version, arguments): approvals bind to it.
    arguments_hash = models.CharField(max_length=64)
    session_id = models.CharField(max_length=128)
    # The end user the agent acts for (its id), the roles the call was made in, and where
    # they came from: "named" (an id, no roles), "asserted" by a trusted agent, or
    # "verified" from the user's token (tools_registry.end_users).
    on_behalf_of = models.CharField(max_length=150, blank=True)
    end_user_roles = models.JSONField(default=list, blank=True)
    end_user_source = models.CharField(max_length=16, blank=True)
    # The other names a verified user's token gave them (its e-mail, its preferred_username),
    # folded: separation of duties knows them by these too (guards.conflicts_with). Personal
    # data, as on_behalf_of is: masked in the trail, never shown to reviewers. A constant
    # default in the database: adding it rewrites no row, and a process still running the
    # code from before it stores calls as before.
    end_user_aliases = models.JSONField(default=list, db_default=[], blank=True)
    reasoning = models.TextField(blank=True)
    token_cost = models.JSONField(null=True, blank=True)
    callback_url = models.URLField(max_length=2048, blank=True)
    # The agent's Idempotency-Key for the request that created this call.
    request_key = models.CharField(max_length=255)
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.REST)
    # The agent's client software as it named itself (MCP's clientInfo: "name/version").
    client = models.CharField(max_length=200, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    approvals_required = models.PositiveSmallIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    # The policy the call is bound to, as it was at intake: version, approvals, time to
    # live, timeout, the team every approval must come from, the rule that applied
    # (approvals.screening). The tool's policy may change later; this call keeps its own.
    policy = models.JSONField(default=dict, blank=True)
    # Risk signals raised at intake: [{"code": ..., "detail": ...}] (tools_registry.risk_signals).
    signals = models.JSONField(default=list, blank=True)
    # The call's amount in minor units and its currency, when the tool moves money: the
    # queue shows and sorts by it, and signals compare it with the tool's usual range.
    amount_minor = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=8, blank=True)
    # A reviewer corrected the arguments before approving; the originals are in the audit trail.
    arguments_edited = models.BooleanField(default=False)
    # The standing approval that approved the call without a reviewer, if one did.
    # Indexed only where set (call_standing_approval_idx): most calls have none.
    standing_approval = models.ForeignKey(
        "StandingApproval",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="calls",
        db_index=False,
    )

    # Executor bookkeeping (the claim/lease/fence protocol, see approvals.execution).
    fence = models.PositiveIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # When the call's task was last sent: by its approval, then by each re-send.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # When the call was last approved (``send.approve``, which sends its task): the longer
    # an approved call has waited for a worker, the longer the re-send sweep waits before
    # it sends one more copy (``sweeps.resend_stalled_approved``).
    approved_at = models.DateTimeField(null=True, blank=True)

    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # Set when a person must look at the call: unknown outcome, failed destructive call.
    needs_attention = models.BooleanField(default=False)
    attention_reason = models.CharField(max_length=200, blank=True)
    # An unknown outcome escalated for a person to settle whatever the downstream says next,
    # short of the effect being found: the call could not run when it was escalated (its
    # agent stopped, its tool switched off...), or a re-run of it was refused at its claim.
    # Reconciliation never re-runs such a call by itself (``guards.left_to_a_person``).
    left_to_person = models.BooleanField(default=False)
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
            models.CheckConstraint(
                condition=models.Q(left_to_person=False) | models.Q(needs_attention=True),
                name="call_left_to_person_needs_attention",
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
            # The reconciliation sweep's candidates (sweeps.reconcile_unknown): the unknown
            # calls due for another check, and those not escalated.
            models.Index(
                fields=["updated_at"],
                condition=models.Q(status="unknown"),
                name="call_unknown_idx",
            ),
            models.Index(
                fields=["created_at", "id"],
                condition=models.Q(status="unknown", needs_attention=False),
                name="call_unknown_unescalated_idx",
            ),
            models.Index(fields=["agent", "session_id", "created_at"], name="call_session_idx"),
            models.Index(
                fields=["standing_approval"],
                condition=models.Q(standing_approval__isnull=False),
                name="call_standing_approval_idx",
            ),
            # The queue sorted by expiry or by amount, keyset-paged like the default order;
            # the expiry sweep reads the same index.
            models.Index(
                fields=["expires_at", "id"],
                condition=models.Q(status="pending"),
                name="call_pending_expiry_id_idx",
            ),
            # The same key as the queue's amount order (selectors.SORTS): no amount last.
            models.Index(
                Coalesce(F("amount_minor"), Value(-1), output_field=models.BigIntegerField()),
                F("id"),
                condition=models.Q(status="pending"),
                name="call_pending_amount_idx",
            ),
            # A tool's usual amounts per currency, for the unusual-amount signal.
            models.Index(
                fields=["tool", "currency", "created_at"],
                condition=models.Q(status="succeeded", amount_minor__isnull=False),
                name="call_settled_amount_idx",
            ),
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

    @property
    def approved_on_arrival(self) -> bool:
        """A write approved in the transaction that stored it, by a policy rule (which asks
        no reviewer) or by a standing approval: it is pending only in passing, and no
        person is asked (``services.calls.create_call``)."""
        return self.risk != "read" and (
            self.approvals_required == 0 or self.standing_approval_id is not None
        )


class Verdict(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class Decision(models.Model):
    """One reviewer's verdict on one call, bound to exactly what they were shown."""

    # Indexed by the unique constraint below, which starts with it; an index of its own would
    # be one more write per row, and the plan some lookups took to scan all the call's rows.
    call = models.ForeignKey(
        ToolCall, on_delete=models.CASCADE, related_name="decisions", db_index=False
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    verdict = models.CharField(max_length=8, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    # The arguments the verdict is for. After a reviewer edits the arguments, approvals of
    # the earlier ones no longer count: they approved something else.
    arguments_hash = models.CharField(max_length=64)
    policy_version = models.PositiveIntegerField()
    # This approval came with the reviewer's correction of the arguments.
    edited = models.BooleanField(default=False)
    # What the reviewer was shown of the world the call would change (the tool's current
    # state: the record before the change), masked, and the hash the verdict is bound to.
    shown_state = models.JSONField(null=True, blank=True)
    shown_state_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # The quorum sweep's candidates: the approvals given since the oldest waiting
            # call arrived (sweeps.complete_restored_quorums), not every approval ever.
            models.Index(
                fields=["created_at", "call"],
                condition=models.Q(verdict="approve"),
                name="decision_approval_time_idx",
            ),
        ]
        constraints = [
            # One verdict of each kind per reviewer per version of the arguments: an approver
            # may still reject while the call waits (decisions._require_first_vote).
            models.UniqueConstraint(
                fields=["call", "reviewer", "arguments_hash", "verdict"],
                name="decision_one_of_each_per_reviewer",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.verdict} by {self.reviewer} on {self.call_id}"


class Note(models.Model):
    """A reviewer's comment on a call that is no longer waiting for a verdict: a dissent
    typed while someone else decided is kept, not thrown away."""

    call = models.ForeignKey(ToolCall, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"note by {self.author_id} on {self.call_id}"


class StandingApproval(models.Model):
    """A reviewer's approval that also covers the same agent's later calls of the same tool,
    for a while or a number of uses, optionally only for matching arguments. Never for
    destructive tools; revocable by its author or an admin; each call it approves names it.
    """

    class Match(models.TextChoices):
        ANY = "any", "Any arguments"
        SAME = "same", "Exactly the same arguments"
        CONDITION = "condition", "Arguments matching a condition"

    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="standing_approvals")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="standing_approvals")
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="standing_approvals"
    )
    # The call whose approval it came with.
    source_call = models.ForeignKey(
        ToolCall, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    match = models.CharField(max_length=16, choices=Match.choices, default=Match.ANY)
    # The tool's version when it was given: it covers calls of that definition only (a new
    # endpoint, schema or description is not what its author saw).
    tool_version = models.CharField(max_length=16, blank=True)
    # SAME: the bound hash of the approved arguments (tool name, version and arguments).
    arguments_hash = models.CharField(max_length=64, blank=True)
    # CONDITION: a CEL condition over args, signals, user and agent (tools_registry.rules).
    condition = models.TextField(blank=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["tool", "agent", "expires_at"],
                condition=models.Q(revoked_at__isnull=True),
                name="standing_live_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_uses__isnull=True)
                | models.Q(uses__lte=models.F("max_uses")),
                name="standing_uses_within_max",
            ),
        ]

    def __str__(self) -> str:
        return f"standing approval {self.pk} of {self.tool_id} for {self.agent_id}"


class KnownCounterparty(models.Model):
    """A recipient or record an agent's calls have acted on with effect, as a keyed hash:
    the signals tell a first contact from a familiar one without storing the address."""

    # Indexed by the unique constraint below, which starts with it; an index of its own would
    # be one more write per row, and the plan some lookups took to scan all the agent's rows.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False)
    fingerprint = models.CharField(max_length=32)
    first_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "fingerprint"], name="counterparty_once"),
        ]

    def __str__(self) -> str:
        return f"counterparty {self.fingerprint} of {self.agent_id}"
