"""The one way into the audit trail: ``record()``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import connection

from audit import chain
from audit.masking import mask_fields, mask_text, mask_value
from audit.models import ActorType, AuditEvent
from core import db


@dataclass(frozen=True)
class Claimed:
    """Someone who claimed to be ``username`` but did not prove it (a failed login)."""

    username: str


def record(
    *,
    action: str,
    actor: Any = None,
    outcome: str = "",
    call: Any = None,
    tool: Any = None,
    agent: Any = None,
    session_id: str = "",
    data: Mapping[str, Any] | None = None,
    sensitive_fields: Iterable[str] = (),
    people: Iterable[str] = (),
    later: bool = False,
) -> AuditEvent:
    """Append one masked event to the trail, inside the caller's transaction.

    ``actor`` is a user, an agent, a ``Claimed`` identity, or ``None`` for Countersign
    itself. ``call`` fills the agent, tool and session columns when they are not given.
    ``data`` is masked before it is written: ``sensitive_fields`` (dotted paths) whole, then
    the secret and PII detectors over everything. The session id comes from the agent, so
    the detectors run over it too (the auditor's session filter masks its input the same
    way, so equal ids still match). ``people``: paths in ``data`` (``user``,
    ``after.owner``) whose values are the names of Countersign's own accounts (a name or a
    list of names), kept as written, as the actor's column keeps them: a name that is an
    e-mail address must not leave the trail unable to say who was given a grant.

    On PostgreSQL the row is sealed into the hash chain later by the sealer (see
    ``audit.chain``); the caller's transaction never waits on the chain. With ``later`` the
    INSERT goes to the database with the transaction's next statement or its COMMIT
    (``core.db.later``): the event has its ``pk`` from then on.
    """
    if call is not None:
        agent = agent or call.agent
        tool = tool or call.tool
        session_id = session_id or call.session_id
    payload = mask_value(mask_fields(dict(data or {}), sensitive_fields))
    for path in people:
        _keep_as_written(payload, data or {}, path.split("."))
    actor_type, actor_id, actor_label = _describe_actor(actor)
    event = AuditEvent(
        action=action,
        outcome=outcome,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label,
        agent_name=getattr(agent, "name", "") or "",
        tool_name=getattr(tool, "name", "") or "",
        session_id=mask_text(session_id or ""),
        call_id=getattr(call, "pk", None),
        data=payload,
    )
    # AuditEvent.objects.create() without composing the INSERT each time: every submission
    # and every executed call write events, and the ORM nearly doubled each one's CPU time.
    if later:
        db.later(db.insert_statement(event))
    else:
        db.insert(event)
    if connection.vendor != "postgresql":
        # SQLite runs one writing transaction at a time, so sealing inline cannot fork the
        # chain; PostgreSQL's concurrent writers are sealed by the background sealer.
        chain.seal_pending()
    return event


def _describe_actor(actor: Any) -> tuple[str, str, str]:
    if actor is None:
        return ActorType.SYSTEM, "", "countersign"
    if isinstance(actor, Claimed):
        return ActorType.USER, "", actor.username[:150]
    if hasattr(actor, "get_username"):
        return ActorType.USER, str(actor.pk), actor.get_username()
    if getattr(getattr(actor, "_meta", None), "label", "") == "tools_registry.Agent":
        return ActorType.AGENT, str(actor.pk), actor.name
    raise TypeError(f"Cannot audit an actor of type {type(actor).__name__}")


def _keep_as_written(payload: Any, data: Any, parts: list[str]) -> None:
    """Put ``data``'s value at ``parts`` back into the masked ``payload`` (``record``'s
    ``people``), if both have the path."""
    for part in parts[:-1]:
        if not (isinstance(data, Mapping) and isinstance(payload, dict) and part in data):
            return
        data, payload = data[part], payload.get(part)
    if isinstance(data, Mapping) and isinstance(payload, dict) and parts[-1] in data:
        payload[parts[-1]] = data[parts[-1]]
