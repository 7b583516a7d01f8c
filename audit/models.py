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
