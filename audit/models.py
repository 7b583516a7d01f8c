from __future__ import annotations

import pgtrigger
from django.db import models
from django.utils import timezone

SEAL_FIELDS = frozenset({"seq", "prev_hash", "hash", "sealed_at"})


class NotASeal(pgtrigger.Condition):
    """True for every UPDATE except sealing a not-yet-sealed row: all seal columns set at
    once, no other column changed. A half-sealed row (a hash but no seq) would sit outside
    the chain, unverified, so it is refused too."""

    sql = "sealing"  # replaced by resolve(); the base class wants something here

    def resolve(self, model: type[models.Model]) -> str:
        columns = [f.column for f in model._meta.concrete_fields if f.name not in SEAL_FIELDS]
        changed = " OR ".join(f'OLD."{c}" IS DISTINCT FROM NEW."{c}"' for c in columns)
        incomplete = (
            'NEW."seq" IS NULL OR NEW."hash" = \'\' OR NEW."prev_hash" = \'\' '
            'OR NEW."sealed_at" IS NULL'
        )
        return f"OLD.\"hash\" <> '' OR {incomplete} OR {changed}"


class ActorType(models.TextChoices):
    USER = "user", "Person"
    AGENT = "agent", "Agent"
    SYSTEM = "system", "System"


class AuditEvent(models.Model):
    """One step in the trail. Rows are only ever inserted, then sealed once into the chain.

    The sealer (``audit.chain.seal_pending``) gives each row its place in the chain
    (``seq``), the previous row's hash and its own hash. PostgreSQL triggers refuse every
    other UPDATE, every DELETE and TRUNCATE.
    """

    occurred_at = models.DateTimeField(default=timezone.now)
    action = models.CharField(max_length=64)
    outcome = models.CharField(max_length=32, blank=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=150, blank=True)
    # Denormalised subject columns: the trail must stay readable and filterable after
    # agents, tools or calls are renamed or removed, so these are values, not foreign keys.
    agent_name = models.CharField(max_length=64, blank=True)
    tool_name = models.CharField(max_length=64, blank=True)
    # Masked before it is stored: a masked value can be several times longer than the 128
    # characters an agent may send, so the column has no length limit.
    session_id = models.TextField(blank=True)
    call_id = models.UUIDField(null=True, blank=True)
    data = models.JSONField(default=dict)

    seq = models.BigIntegerField(null=True, blank=True, unique=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)
    sealed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["call_id", "id"], name="audit_call_idx"),
            models.Index(fields=["agent_name", "id"], name="audit_agent_idx"),
            models.Index(fields=["tool_name", "id"], name="audit_tool_idx"),
            models.Index(fields=["session_id", "id"], name="audit_session_idx"),
            models.Index(fields=["action", "id"], name="audit_action_idx"),
            models.Index(fields=["actor_label", "id"], name="audit_actor_idx"),
            models.Index(fields=["outcome", "id"], name="audit_outcome_idx"),
            models.Index(fields=["occurred_at"], name="audit_occurred_idx"),
            models.Index(fields=["id"], condition=models.Q(hash=""), name="audit_unsealed_idx"),
        ]
        triggers = [
            pgtrigger.Protect(name="append_only_delete", operation=pgtrigger.Delete),
            pgtrigger.Trigger(
                name="append_only_truncate",
                operation=pgtrigger.Truncate,
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                func="RAISE EXCEPTION 'pgtrigger: Cannot truncate the audit trail'; RETURN NULL;",
            ),
            # The one UPDATE allowed: sealing an unsealed row, touching only the seal columns.
            pgtrigger.Protect(
                name="seal_only_update",
                operation=pgtrigger.Update,
                condition=NotASeal(),
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq or '-'} {self.action} by {self.actor_label or self.actor_type}"


class DailyCount(models.Model):
    """The analytics page's summary of the trail, one row per (UTC day, metric, key, variant),
    maintained by the sealer in the same transaction that seals the events it counts
    (``audit.rollups``), so every sealed event is counted exactly once. Unlike the trail it
    is derived data: ``manage.py rebuild_audit_rollups`` makes it again from the events."""

    day = models.DateField()
    # calls (key: tool), tool_votes / reviewer_votes (variant: approve or reject),
    # results (key: tool, variant: succeeded/failed/unknown), tokens (key: agent).
    metric = models.CharField(max_length=24)
    key = models.CharField(max_length=150)
    variant = models.CharField(max_length=32, blank=True)
    n = models.BigIntegerField(default=0)
    input_tokens = models.FloatField(default=0)
    output_tokens = models.FloatField(default=0)
    usd = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "metric", "key", "variant"], name="audit_dailycount_uniq"
            )
        ]
        indexes = [models.Index(fields=["metric", "day"], name="audit_dailycount_metric_idx")]

    def __str__(self) -> str:
        return f"{self.day} {self.metric} {self.key} {self.variant}: {self.n}"


class DecisionLatency(models.Model):
    """How long a decided call waited: submission to final approval or rejection, one row per
    call, written by the sealer with the decision's event (``audit.rollups``)."""

    call_id = models.UUIDField(primary_key=True)
    tool_name = models.CharField(max_length=64)
    decided_at = models.DateTimeField()
    seconds = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["decided_at"], name="audit_latency_decided_idx")]

    def __str__(self) -> str:
        return f"{self.call_id} {self.tool_name} {self.seconds:.0f} s"


class VerificationRun(models.Model):
    """A chain verification an auditor asked for from the page: who, when, its progress and
    its outcome (the outcome is also recorded in the trail as ``audit.chain_verified``)."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"

    requested_by = models.ForeignKey(
        "auth.User", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=150)
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the worker last said it was alive (claimed the run, reported progress): a run
    # silent for STALE_AFTER is taken for dead (audit.verification_runs).
    progressed_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    total = models.BigIntegerField(default=0)
    checked = models.BigIntegerField(default=0)
    ok = models.BooleanField(null=True)
    reason = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"verification {self.pk} by {self.requested_by_label}: {self.state}"

    @property
    def percent(self) -> int:
        if self.state == self.State.DONE:
            return 100
        return min(int(self.checked * 100 / self.total), 99) if self.total else 0
