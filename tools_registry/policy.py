"""Policy defaults by risk class, and the rules every policy must satisfy.

A tool admin may tighten or loosen a tool's policy within these rules; every change goes
through ``tools_registry.services.update_policy``, which validates with
``validate_policy`` and audits the before/after values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import limits
from django.db import models

from audit.masking import field_path, path_parts
from tools_registry.schemas import has_argument_path


class Risk(models.TextChoices):
    READ = "read", "Read"
    WRITE = "write", "Write"
    DESTRUCTIVE = "destructive", "Destructive"


@dataclass(frozen=True)
class PolicyDefaults:
    timeout_seconds: float
    max_attempts: int
    approvals_required: int
    approval_ttl_seconds: int
    rate_limit_per_agent: str
    rate_limit_per_user: str
    breaker_threshold: int = 5
    breaker_cooldown_seconds: int = 60

    def as_fields(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS: dict[str, PolicyDefaults] = {
    # Reads have no side effect: retried with backoff, short timeout, no approval.
    Risk.READ: PolicyDefaults(
        timeout_seconds=5,
        max_attempts=3,
        approvals_required=0,
        approval_ttl_seconds=0,
        rate_limit_per_agent="120/minute",
        rate_limit_per_user="",
    ),
    # A failed write goes back to the agent; it may ask for a retry with the same key.
    Risk.WRITE: PolicyDefaults(
        timeout_seconds=30,
        max_attempts=1,
        approvals_required=1,
        approval_ttl_seconds=3600,
        rate_limit_per_agent="30/minute",
        rate_limit_per_user="",
    ),
    # Destructive calls: two distinct reviewers, one attempt, never retried automatically.
    Risk.DESTRUCTIVE: PolicyDefaults(
        timeout_seconds=30,
        max_attempts=1,
        approvals_required=2,
        approval_ttl_seconds=3600,
        rate_limit_per_agent="10/minute",
        rate_limit_per_user="",
    ),
}


def defaults_for(risk: str) -> PolicyDefaults:
    return DEFAULTS[risk]


# The Tool fields a tool admin owns. Everything else on Tool comes from code.
POLICY_FIELDS = (
    "enabled",
    "timeout_seconds",
    "max_attempts",
    "rate_limit_per_agent",
    "rate_limit_per_user",
    "approvals_required",
    "approval_ttl_seconds",
    "breaker_threshold",
    "breaker_cooldown_seconds",
    "sensitive_fields",
    "secret_fields",
    "reminder_after_seconds",
    "escalation_group",
    "rules",
)

# Reads run inside the agent's HTTP request (with their retries), so they must be quick.
MAX_TIMEOUT_SECONDS: dict[str, float] = {
    Risk.READ: 30.0,
    Risk.WRITE: 600.0,
    Risk.DESTRUCTIVE: 600.0,
}
MAX_READ_ATTEMPTS = 5
# The executor never waits longer than this between two attempts of a read
# (``approvals.execution.runner.READ_BACKOFF`` is capped at it).
READ_BACKOFF_MAX_SECONDS = 2.0
MAX_APPROVALS = 10
MAX_APPROVAL_TTL_SECONDS = 30 * 24 * 3600
MAX_BREAKER_THRESHOLD = 1000
MAX_BREAKER_COOLDOWN_SECONDS = 24 * 3600

PolicyErrors = dict[str, list[str]]


def handler_budget_seconds(*, timeout_seconds: float, max_attempts: int) -> float:
    """How long one execution's handler may take: every attempt's timeout. The executor's
    lease, Celery's time limits and the breaker's probe lease are all measured from it."""
    return float(timeout_seconds) * max(int(max_attempts), 1)


def read_run_seconds(*, timeout_seconds: float, max_attempts: int) -> float:
    """The longest a read can run inside the agent's request: its handler budget and the
    longest backoff between attempts."""
    attempts = max(int(max_attempts), 1)
    budget = handler_budget_seconds(timeout_seconds=timeout_seconds, max_attempts=attempts)
    return budget + READ_BACKOFF_MAX_SECONDS * (attempts - 1)


# ``validate_policy`` keeps every read within these bounds, so no read runs longer.
LONGEST_READ_SECONDS = read_run_seconds(
    timeout_seconds=MAX_TIMEOUT_SECONDS[Risk.READ], max_attempts=MAX_READ_ATTEMPTS
)


def rate_limit_problem(value: str) -> str | None:
    """Why ``value`` is not one rate limit in the ``limits`` notation ("30/minute"), or None."""
    if not value:
        return None
    try:
        parsed = limits.parse_many(value)
    except ValueError:
        return f"{value!r} is not a rate limit; write it like 30/minute or 1000/day."
    if len(parsed) != 1:
        # limits.parse() would silently keep only the first of several.
        return "Give one limit, like 30/minute, not several."
    if parsed[0].amount < 1:
        return "A limit must allow at least 1 call; disable the tool to refuse every call."
    return None


def validate_policy(
    *,
    risk: str,
    values: Mapping[str, Any],
    input_schema: Mapping[str, Any],
    available: bool = True,
    code_sensitive_fields: Iterable[str] = (),
) -> PolicyErrors:
    """Every rule the complete policy ``values`` breaks, by field; empty when it is valid.

    ``code_sensitive_fields`` are the fields the tool's code declares sensitive: they stay
    masked whatever the admin sets.
    """
    errors: PolicyErrors = {}

    def fail(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    needs_approval = risk != Risk.READ

    timeout = values["timeout_seconds"]
    if timeout is None or timeout <= 0:
        fail("timeout_seconds", "The timeout must be more than 0 seconds.")
    elif timeout > MAX_TIMEOUT_SECONDS[risk]:
        fail(
            "timeout_seconds",
            f"A {risk} tool's timeout may be at most {MAX_TIMEOUT_SECONDS[risk]:g} seconds.",
        )

    attempts = values["max_attempts"]
    if attempts is None or attempts < 1:
        fail("max_attempts", "A call needs at least 1 attempt.")
    elif risk == Risk.DESTRUCTIVE and attempts != 1:
        fail("max_attempts", "A destructive call is never retried: max attempts must be 1.")
    elif risk == Risk.WRITE and attempts != 1:
        fail(
            "max_attempts",
            "A write runs once; a failure goes back to the agent, which may ask for a retry "
            "with the same key. Max attempts must be 1.",
        )
    elif attempts > MAX_READ_ATTEMPTS:
        fail("max_attempts", f"A read may be tried at most {MAX_READ_ATTEMPTS} times.")

    for field in ("rate_limit_per_agent", "rate_limit_per_user"):
        problem = rate_limit_problem(values[field] or "")
        if problem:
            fail(field, problem)

    approvals = values["approvals_required"]
    ttl = values["approval_ttl_seconds"]
    if needs_approval:
        if approvals is None or approvals < 1:
            fail("approvals_required", f"A {risk} tool needs at least 1 approval.")
        elif approvals > MAX_APPROVALS:
            fail("approvals_required", f"At most {MAX_APPROVALS} approvals can be required.")
        if ttl is None or ttl <= 0:
            fail(
                "approval_ttl_seconds",
                "Pending calls must expire: the approval TTL must be more than 0 seconds.",
            )
        elif ttl > MAX_APPROVAL_TTL_SECONDS:
            fail("approval_ttl_seconds", "The approval TTL may be at most 30 days.")
    else:
        if approvals:
            fail("approvals_required", "Reads run at once; they cannot require approvals.")
        if ttl:
            fail("approval_ttl_seconds", "Reads never wait for approval; leave the TTL at 0.")

    threshold = values["breaker_threshold"]
    if threshold is None or not 1 <= threshold <= MAX_BREAKER_THRESHOLD:
        fail(
            "breaker_threshold",
            f"The circuit breaker opens after 1 to {MAX_BREAKER_THRESHOLD} failures.",
        )
    cooldown = values["breaker_cooldown_seconds"]
    if cooldown is None or not 1 <= cooldown <= MAX_BREAKER_COOLDOWN_SECONDS:
        fail("breaker_cooldown_seconds", "The cool-down must be 1 second to 1 day.")

    reminder = values.get("reminder_after_seconds")
    if reminder is not None:
        if not needs_approval:
            fail("reminder_after_seconds", "Reads never wait for a reviewer; leave it empty.")
        elif reminder <= 0:
            fail("reminder_after_seconds", "The reminder must come after more than 0 seconds.")
        elif ttl and reminder >= ttl:
            fail("reminder_after_seconds", "The reminder must come before the call expires.")

    for problem in sensitive_fields_problems(
        values["sensitive_fields"], input_schema, code_sensitive_fields
    ):
        fail("sensitive_fields", problem)
    for problem in sensitive_fields_problems(values.get("secret_fields", []), input_schema):
        fail("secret_fields", problem)

    if values["enabled"] and not available:
        fail(
            "enabled",
            "The tool is gone from its code or its upstream; it cannot be enabled until it is back.",
        )
    return errors


def sensitive_fields_problems(
    fields: Any, input_schema: Mapping[str, Any], code_sensitive_fields: Iterable[str] = ()
) -> list[str]:
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        return ['Give a list of argument paths, like ["card.number", "email"].']
    problems = []
    for path in fields:
        if not path or path != path.strip() or field_path(path_parts(path)) != path:
            problems.append(
                f"{path!r} is not a dotted argument path (a dot inside a name is written \\.)."
            )
        elif not has_argument_path(input_schema, path):
            problems.append(f"{path!r} is not an argument of this tool.")
    if len(set(fields)) != len(fields):
        problems.append("Each path may be listed once.")
    missing = sorted(set(code_sensitive_fields) - set(fields))
    if missing:
        problems.append(f"The tool's code marks {', '.join(missing)} sensitive; they stay masked.")
    return problems


def policy_values(tool: Any) -> dict[str, Any]:
    """The tool's current policy, one value per field of ``POLICY_FIELDS``."""
    return {name: getattr(tool, name) for name in POLICY_FIELDS}
