"""Tool rows from the tools declared in code, keeping what admins set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from audit.log import record
from tools_registry import registry, rules
from tools_registry.models import Tool
from tools_registry.policy import POLICY_FIELDS, defaults_for, policy_values, validate_policy
from tools_registry.services.policies import policy_drift

# Fields that come from code; everything else on Tool belongs to the admins.
CODE_FIELDS = (
    "description",
    "input_schema",
    "risk",
    "version",
    "overwrites",
    "idempotent",
    "open_world",
    "output_schema",
)
# Left out of the audit event's before/after (it says whether they changed): they are large.
SCHEMAS = ("input_schema", "output_schema")


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    # "name: why": tools whose policy no longer fits their new code, off until an admin
    # mends it (also in ``updated``).
    switched_off: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


@transaction.atomic
def sync_tools(*, actor: Any = None) -> SyncReport:
    """Make the Tool rows match the in-code registry, keeping what admins set.

    New tools get their risk class's default policy. Existing tools get the code's
    description, schema, risk and version; their policy is left alone, except that fields
    the code newly declares sensitive are added to the masked ones (masking only ever
    widens from code). A new risk class adapts the policy (``policy_for_new_risk``); a tool
    whose policy no longer fits its new risk or schema is switched off until an admin mends
    it. Tools whose code is gone are disabled; when the code comes back the tool stays
    disabled until an admin enables it again.
    """
    report = SyncReport()
    declared = {spec.name: spec for spec in registry.registered()}
    # The row locks make two concurrent syncs (two deploys) apply one after the other.
    # Only the tools declared in code: imported ones belong to their upstreams' syncs.
    # In the order of their ids, as every change that locks several tools takes them
    # (``grants.hold_reviews_of``): two such changes wait for each other, never deadlock.
    existing = {
        t.name: t
        for t in Tool.objects.select_for_update().filter(upstream__isnull=True).order_by("pk")
    }
    taken = set(
        Tool.objects.filter(upstream__isnull=False, name__in=declared).values_list(
            "name", flat=True
        )
    )
    if taken:
        raise ValueError(
            f"Tools declared in code share names with imported tools: {', '.join(sorted(taken))}."
        )
    for name, spec in declared.items():
        code_values = {name: getattr(spec, name) for name in CODE_FIELDS}
        tool = existing.get(name)
        if tool is None:
            tool = Tool.objects.create(
                name=name,
                sensitive_fields=list(spec.sensitive_fields),
                secret_fields=list(spec.secret_fields),
                **code_values,
                **defaults_for(spec.risk).as_fields(),
            )
            report.created.append(name)
            record(
                action="tool.registered",
                actor=actor,
                tool=tool,
                data={"version": spec.version, "risk": spec.risk},
            )
            continue
        changed: dict[str, Any] = {k: v for k, v in code_values.items() if getattr(tool, k) != v}
        if not tool.available:
            changed["available"] = True
        if "risk" in changed:
            changed.update(policy_for_new_risk(tool, spec.risk, spec.input_schema))
        newly_sensitive = [f for f in spec.sensitive_fields if f not in tool.sensitive_fields]
        if newly_sensitive:
            changed["sensitive_fields"] = [*tool.sensitive_fields, *newly_sensitive]
        newly_secret = [f for f in spec.secret_fields if f not in tool.secret_fields]
        if newly_secret:
            changed["secret_fields"] = [*tool.secret_fields, *newly_secret]
        if not changed:
            report.unchanged.append(name)
            continue
        before = {k: getattr(tool, k) for k in changed if k not in SCHEMAS}
        for key, value in changed.items():
            setattr(tool, key, value)
        drift = (
            policy_drift(tool) if tool.enabled and {"risk", "input_schema"} & set(changed) else []
        )
        if drift:
            # As an upstream's sync does: a rule the new schema cannot evaluate would fail
            # closed on every call, and a sensitive field gone leaves its renamed value bare.
            before["enabled"], changed["enabled"], tool.enabled = True, False, False
            report.switched_off.append(f"{name}: {'; '.join(drift)}")
        if any(name in POLICY_FIELDS for name in changed):
            before["policy_version"] = tool.policy_version
            changed["policy_version"] = tool.policy_version = tool.policy_version + 1
        tool.save(update_fields=[*changed, "updated_at"])
        report.updated.append(name)
        record(
            action="tool.updated_from_code",
            actor=actor,
            tool=tool,
            data={
                "before": before,
                "after": {k: v for k, v in changed.items() if k not in SCHEMAS},
                "schema_changed": "input_schema" in changed,
                "output_schema_changed": "output_schema" in changed,
                **({"disabled_because": drift} if drift else {}),
            },
        )
    for name, tool in existing.items():
        if name not in declared and (tool.available or tool.enabled):
            tool.available = False
            tool.enabled = False
            tool.policy_version += 1
            tool.save(update_fields=["available", "enabled", "policy_version", "updated_at"])
            report.disabled.append(name)
            record(action="tool.disabled_code_gone", actor=actor, tool=tool, data={})
    return report


def policy_for_new_risk(tool: Tool, risk: str, input_schema: Any) -> dict[str, Any]:
    """The policy fields a new risk class does not allow, reset to that class's defaults,
    and the rules adapted to it (``rules.for_risk``).

    A read that became a write may no longer be retried and now needs an approval; a write
    that became a read needs none. Fields the admins set that stay valid are kept.
    """
    current = policy_values(tool)
    problems = validate_policy(risk=risk, values=current, input_schema=input_schema)
    defaults = defaults_for(risk).as_fields()
    reset = {name: defaults[name] for name in problems if name in defaults}
    # Rules are adapted to the new class, never loosened: a ``require`` of a team keeps its
    # team (dropped, any reviewers approved what the team was to decide), and a refusal that
    # no longer fits the schema stays and fails closed (dropped, it let the calls through).
    adapted = rules.for_risk(tool.rules or [], risk)
    if adapted != (tool.rules or []):
        reset["rules"] = adapted
    return reset
