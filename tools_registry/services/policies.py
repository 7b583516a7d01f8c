"""Changes to a tool's policy: validated, versioned and audited with before/after values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.log import record
from tools_registry import registry, rule_teams, rules
from tools_registry.models import Tool
from tools_registry.policy import POLICY_FIELDS, policy_values, validate_policy


class PolicyInvalid(ValidationError):
    """The policy breaks a rule; ``message_dict`` maps each field to what is wrong with it."""


def code_sensitive_fields(tool: Tool) -> tuple[str, ...]:
    """The fields the tool's code declares sensitive (none when the code is gone)."""
    try:
        return registry.get(tool.name).sensitive_fields
    except registry.UnknownTool:
        return ()


def check_policy(tool: Tool, values: Mapping[str, Any]) -> None:
    """Raise ``PolicyInvalid`` if ``values`` (a complete policy) is not allowed for ``tool``."""
    errors = validate_policy(
        risk=tool.risk,
        values=values,
        input_schema=tool.input_schema,
        available=tool.available,
        code_sensitive_fields=code_sensitive_fields(tool),
    )
    rule_problems = rules.problems(
        values.get("rules", []),
        risk=tool.risk,
        input_schema=tool.input_schema,
        teams=frozenset(Group.objects.values_list("name", flat=True)),
    )
    if rule_problems:
        errors["rules"] = rule_problems
    if errors:
        raise PolicyInvalid(errors)


def policy_drift(tool: Tool) -> list[str]:
    """What in the tool's policy no longer fits the tool as it now is (a rule reading an
    argument its new schema lacks, a sensitive field gone), one line per field; nothing if
    it all fits. A sync switches such a tool off until an admin mends its policy."""
    try:
        check_policy(tool, policy_values(tool))
    except PolicyInvalid as invalid:
        return [f"{name}: {' '.join(problems)}" for name, problems in invalid.message_dict.items()]
    return []


def _audited(value: Any) -> Any:
    if isinstance(value, Group):
        return value.name
    return value


@transaction.atomic
def update_policy(*, tool: Tool, changes: Mapping[str, Any], changed_by: Any) -> Tool:
    """Apply ``changes`` (policy fields only) to the tool and return the saved row.

    The whole resulting policy is validated, not only the changed fields: lowering the
    TTL below the reminder fails too. A real change bumps ``policy_version`` (decisions
    record the version they were made under) and is audited with the old and new values
    of the fields that changed; a no-op changes nothing and records nothing.
    """
    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        raise ValueError(f"not policy fields: {sorted(unknown)}")
    # The lock orders concurrent edits: each one validates against the latest policy.
    locked = (
        Tool.objects.select_for_update(of=("self",))
        .select_related("escalation_group")
        .get(pk=tool.pk)
    )
    before = policy_values(locked)
    after = {**before, **changes}
    if after.get("rules") in (None, ""):
        # No rules, as the admin's form reads an empty editor (a null failed the NOT NULL).
        after["rules"] = []
    changed = [name for name in POLICY_FIELDS if after[name] != before[name]]
    if not changed:
        return locked
    # The teams the rules name stay until this commits: a team admin deleting or renaming
    # one meanwhile waits, then finds these rules naming it (``rule_teams``).
    rule_teams.lock_teams(rules.teams_named(after["rules"]))
    check_policy(locked, after)
    for name in changed:
        setattr(locked, name, after[name])
    locked.policy_version += 1
    locked.save(update_fields=[*changed, "policy_version", "updated_at"])
    record(
        action="tool.policy_changed",
        actor=changed_by,
        tool=locked,
        data={
            "policy_version": locked.policy_version,
            "before": {name: _audited(before[name]) for name in changed},
            "after": {name: _audited(after[name]) for name in changed},
        },
    )
    return locked
