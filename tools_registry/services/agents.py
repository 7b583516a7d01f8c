"""Agents: which program may call which tools, for which end users in which roles, and
stopping one; audited like any other grant."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.log import record
from tools_registry import hooks, sql
from tools_registry.models import Agent, Tool
from tools_registry.role_scopes import clean_role_scopes, is_role

# Agent fields an admin sets; the webhook secret is generated and never shown here.
AGENT_FIELDS = (
    "name",
    "description",
    "owner",
    "max_rounds_per_session",
    "enabled",
    "user_roles_from",
    "assertable_roles",
    "identity_provider",
    "role_scopes",
    "unscoped_access",
)
MAX_ASSERTABLE_ROLES = 100
MAX_STOP_REASON = 500


class AgentInvalid(ValidationError):
    """The agent's settings break a rule; ``message_dict`` maps fields to what is wrong."""


def _snapshot(agent: Agent, tool_names: Iterable[str]) -> dict[str, Any]:
    return {
        "name": agent.name,
        "description": agent.description,
        "owner": agent.owner.get_username(),
        "max_rounds_per_session": agent.max_rounds_per_session,
        "enabled": agent.enabled,
        "allowed_tools": sorted(tool_names),
        "user_roles_from": agent.user_roles_from,
        "assertable_roles": list(agent.assertable_roles or []),
        "identity_provider": agent.identity_provider.name if agent.identity_provider else None,
        "role_scopes": agent.role_scopes or {},
        "unscoped_access": agent.unscoped_access,
    }


def check_end_users(agent: Agent) -> None:
    """Raise ``AgentInvalid`` unless the agent's end-user settings hold together; stores
    them cleaned (role scopes in their canonical order) on ``agent``."""
    problems: dict[str, list[str]] = {}
    roles = agent.assertable_roles
    if not isinstance(roles, list) or not all(is_role(r) for r in roles):
        problems["assertable_roles"] = ["A list of role names (1 to 64 printable characters)."]
    elif len(roles) > MAX_ASSERTABLE_ROLES:
        problems["assertable_roles"] = [f"At most {MAX_ASSERTABLE_ROLES} roles."]
    else:
        agent.assertable_roles = list(dict.fromkeys(roles))
    if agent.user_roles_from == Agent.UserRoles.VERIFIED and agent.identity_provider_id is None:
        problems["identity_provider"] = [
            "Verified roles need the identity provider that signs the users' tokens."
        ]
    try:
        agent.role_scopes = clean_role_scopes(
            agent.role_scopes, tool_names=Tool.objects.values_list("name", flat=True)
        )
    except ValueError as exc:
        problems["role_scopes"] = list(exc.args[0])
    if agent.unscoped_access not in Agent.UnscopedAccess.values:
        problems["unscoped_access"] = ["Choose what a call without a scoped role gets."]
    if problems:
        raise AgentInvalid(problems)


@transaction.atomic
def save_agent(
    *, agent: Agent, allowed_tools: Iterable[Tool] | None = None, changed_by: Any
) -> Agent:
    """Create or update ``agent`` (an instance carrying the new values) and its allowlist.

    Audited as ``agent.created`` with the allowlist, or as ``agent.updated`` with the
    before/after values of what changed (the end-user roles and scopes included: they
    decide who may use what). Disabling an agent takes effect on its next request:
    authentication reads ``enabled`` every time. Stopping is not a change made here
    (``stop_agent``): it is kept as it is stored.
    """
    if agent.max_rounds_per_session < 1:
        raise ValueError("an agent needs at least 1 round per session")
    check_end_users(agent)
    tools = None if allowed_tools is None else list(allowed_tools)
    if agent._state.adding:
        agent.save()
        if tools is not None:
            agent.allowed_tools.set(tools)
        record(
            action="agent.created",
            actor=changed_by,
            agent=agent,
            data=_snapshot(agent, [t.name for t in tools or []]),
            people=("owner",),
        )
        return agent

    stored = (
        Agent.objects.select_for_update(of=("self",))
        .select_related("owner", "identity_provider")
        .get(pk=agent.pk)
    )
    before = _snapshot(stored, stored.allowed_tools.values_list("name", flat=True))
    # Only stop_agent and resume_agent stop and resume: an edit made from a page loaded
    # before a stop must not resume the agent by saving what the page had.
    agent.stopped_at, agent.stop_reason = stored.stopped_at, stored.stop_reason
    agent.stopped_by_id = stored.stopped_by_id
    # Nor change the webhook secrets (rotate_webhook_secret does): a rotation committed
    # while the edit was on its way was undone, the old secret written back.
    agent.webhook_secret = stored.webhook_secret
    agent.previous_webhook_secrets = stored.previous_webhook_secrets
    agent.save()
    if tools is not None:
        agent.allowed_tools.set(tools)
    after = _snapshot(agent, agent.allowed_tools.values_list("name", flat=True))
    changed = [key for key in after if after[key] != before[key]]
    if changed:
        record(
            action="agent.updated",
            actor=changed_by,
            agent=agent,
            data={
                "before": {key: before[key] for key in changed},
                "after": {key: after[key] for key in changed},
            },
            people=("before.owner", "after.owner"),
        )
    return agent


@transaction.atomic
def set_enabled(*, agent: Agent, enabled: bool, changed_by: Any) -> Agent:
    """Enable or disable an agent; a disabled agent's next request is refused (401).

    The row is locked before it is read: ``save_agent`` saves the instance it is given
    whole, so one read before an edit under way committed wrote that edit back."""
    stored = Agent.objects.select_for_update(of=("self",)).get(pk=agent.pk)
    stored.enabled = enabled
    return save_agent(agent=stored, changed_by=changed_by)


@dataclass(frozen=True)
class Stop:
    """What a stop did: the agent as stored, the calls it cancelled, and whether the agent
    had been stopped already (then nothing was done)."""

    agent: Agent
    cancelled: list[str]
    already_stopped: bool = False


@transaction.atomic
def stop_agent(*, agent: Agent, reason: str, stopped_by: Any = None) -> Stop:
    """Stop an agent at once: from the commit on, every request with its tokens is refused
    (``agent_stopped``, with ``reason``), its calls still waiting for a decision are
    cancelled with the reason, those approved but not yet claimed fail unrun (a resume does
    not run them), its standing approvals are revoked (they would approve its calls after a
    resume), and none of its calls is claimed for execution any more;
    calls already running finish under the fence rules, and those whose outcome is unknown
    are left to a person. One audit event, ``agent.stopped``, records the reason and lists
    every call it cancelled.

    The agent's run lock (``sql.lock_agent_for_stop``) first waits for the submissions and
    claims already under way, and holds off the ones that come later until this commits,
    when they find the agent stopped: no call can be created or claimed between the stop
    and its cancellations. Stopping a stopped agent does nothing.
    """
    reason = reason.strip()
    if not reason:
        raise ValueError("a stop needs a reason: the agent and the reviewers are told it")
    if len(reason) > MAX_STOP_REASON:
        raise ValueError(f"the reason is at most {MAX_STOP_REASON} characters")
    sql.lock_agent_for_stop(agent.pk)
    # Read after the run lock, which a resume takes too: the stop or resume before this one
    # has committed.
    current = Agent.objects.get(pk=agent.pk)
    if current.stopped_at is not None:
        return Stop(agent=current, cancelled=[], already_stopped=True)
    # After the lock: every claim that got in before it started earlier than this.
    stopped_at = timezone.now()
    # Its calls first, its row last: a transaction that holds one of the calls may still
    # write a row that points at the agent (a webhook delivery) and so wait for the agent's
    # row lock, while the stop waits for the call: a deadlock, with the stop as its victim.
    current.stopped_at, current.stop_reason, current.stopped_by = stopped_at, reason, stopped_by
    cancelled = hooks.agent_stopped(current, reason, stopped_by)
    # FOR UPDATE, not NO KEY: the submissions and claims waiting on the run lock then read
    # the row as this commits it, stopped (see ``sql.hold_agent_running``).
    locked = Agent.objects.select_for_update(of=("self",)).get(pk=agent.pk)
    locked.stopped_at, locked.stop_reason, locked.stopped_by = stopped_at, reason, stopped_by
    locked.save(update_fields=["stopped_at", "stop_reason", "stopped_by"])
    record(
        action="agent.stopped",
        actor=stopped_by,
        outcome="stopped",
        agent=locked,
        data={"reason": reason, "cancelled": len(cancelled), "cancelled_calls": cancelled},
    )
    return Stop(agent=locked, cancelled=cancelled)


@transaction.atomic
def resume_agent(*, agent: Agent, resumed_by: Any = None, note: str = "") -> bool:
    """Let a stopped agent's tokens in again; whether it was stopped. The calls its stop
    cancelled stay cancelled: an effect still wanted is a new call, with its own approval.
    The calls a stop left to a person stay theirs."""
    sql.lock_agent_for_stop(agent.pk)  # after a stop under way, never in its middle
    locked = Agent.objects.select_for_update(of=("self",)).get(pk=agent.pk)
    if locked.stopped_at is None:
        return False
    stopped_at, reason = locked.stopped_at, locked.stop_reason
    locked.stopped_at, locked.stop_reason, locked.stopped_by = None, "", None
    locked.save(update_fields=["stopped_at", "stop_reason", "stopped_by"])
    record(
        action="agent.resumed",
        actor=resumed_by,
        outcome="running",
        agent=locked,
        data={
            "note": note.strip()[:MAX_STOP_REASON],
            "stopped_at": stopped_at.isoformat(),
            "stop_reason": reason,
        },
    )
    return True
