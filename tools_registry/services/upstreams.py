"""Upstreams and the tools imported from them: registered, re-synced, switched off.

A sync reads the whole offer first (over the network, outside any transaction); only a
readable offer changes anything, in one transaction: new tools are created (disabled
unless asked for), changed tools take the upstream's schemas and hints, and its
description and risk unless an admin edited them; a tool gone from the upstream is
disabled, not deleted. Every change is audited (``tool.imported``, ``tool.changed``,
``tool.removed_upstream``); header values never are, only their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.log import record
from tools_registry.models import Tool, Upstream
from tools_registry.policy import defaults_for
from tools_registry.registry import tool_version
from tools_registry.services.sync import policy_for_new_risk
from tools_registry.upstreams import mcp, openapi, secrets
from tools_registry.upstreams.offers import ImportedTool, ImportFailed, Offer

# What a sync reads of an upstream; the demo passes its own in-process reader.
Reader = Callable[[Upstream], Offer]


@dataclass
class UpstreamSync:
    imported: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@transaction.atomic
def register_upstream(
    *,
    name: str,
    kind: str,
    url: str,
    base_url: str = "",
    headers: secrets.Headers = (),  # type: ignore[assignment]
    timeout_seconds: float = 10,
    idempotency_header: str = "Idempotency-Key",
    rerunnable: bool = False,
    created_by: Any = None,
) -> Upstream:
    upstream = Upstream(
        name=name,
        kind=kind,
        url=url,
        base_url=base_url,
        timeout_seconds=timeout_seconds,
        idempotency_header=idempotency_header,
        rerunnable=rerunnable,
    )
    upstream.full_clean(exclude=["headers_encrypted", "header_names"])
    _set_headers(upstream, list(headers))
    upstream.save()
    record(
        action="upstream.registered",
        actor=created_by,
        data={
            "upstream": name,
            "kind": kind,
            "url": url,
            "base_url": base_url,
            "header_names": upstream.header_names,
            "idempotency_header": idempotency_header,
            "rerunnable": rerunnable,
        },
    )
    return upstream


def _set_headers(upstream: Upstream, headers: secrets.Headers) -> None:
    upstream.headers_encrypted = secrets.encrypt(headers)
    upstream.header_names = [name for name, _ in headers]


@transaction.atomic
def set_headers(*, upstream: Upstream, headers: secrets.Headers, changed_by: Any) -> Upstream:
    """Replace the headers sent to the upstream; audited by name only."""
    before = list(upstream.header_names)
    _set_headers(upstream, headers)
    upstream.save(update_fields=["headers_encrypted", "header_names"])
    record(
        action="upstream.headers_changed",
        actor=changed_by,
        data={"upstream": upstream.name, "before": before, "after": upstream.header_names},
    )
    return upstream


def read_offer(upstream: Upstream) -> Offer:
    """What the upstream offers now, read over the network with its headers."""
    headers = secrets.decrypt(upstream.headers_encrypted)
    if upstream.kind == Upstream.Kind.MCP:
        return mcp.offer(
            upstream=upstream.name,
            url=upstream.url,
            headers=headers,
            timeout=upstream.timeout_seconds,
        )
    document = openapi.fetch(upstream.url, headers=headers, timeout=upstream.timeout_seconds)
    return openapi.offer(
        document,
        upstream=upstream.name,
        document_url=upstream.url,
        base_url=upstream.base_url,
        reserved_headers=frozenset([upstream.idempotency_header, *upstream.header_names]),
    )


def sync_upstream(
    *,
    upstream: Upstream,
    actor: Any = None,
    enable_new: bool = False,
    reader: Reader = read_offer,
) -> UpstreamSync:
    """Import what the upstream offers now (see the module's docstring). ``ImportFailed``
    when its offer cannot be read: then nothing changes but the upstream's last error."""
    if not upstream.enabled:
        raise ImportFailed(f"The upstream {upstream.name} is switched off; switch it on first.")
    try:
        offer = reader(upstream)
    except (ImportFailed, secrets.SecretsUnreadable) as failure:
        message = failure.message if isinstance(failure, ImportFailed) else str(failure)
        with transaction.atomic():
            Upstream.objects.filter(pk=upstream.pk).update(last_sync_error=message[:2000])
            record(
                action="upstream.sync_failed",
                actor=actor,
                outcome="failed",
                data={"upstream": upstream.name, "error": message},
            )
        raise ImportFailed(message) from None
    return _apply(upstream, offer, actor=actor, enable_new=enable_new)


@transaction.atomic
def _apply(upstream: Upstream, offer: Offer, *, actor: Any, enable_new: bool) -> UpstreamSync:
    report = UpstreamSync(skipped=list(offer.skipped))
    offered = {t.name: t for t in offer.tools}
    # The row locks make two syncs of one upstream (an admin and a deploy) apply in turn.
    existing = {t.name: t for t in Tool.objects.select_for_update().filter(name__in=offered)}
    for name, imported in offered.items():
        tool = existing.get(name)
        if tool is not None and tool.upstream_id != upstream.pk:
            report.skipped.append(f"{name}: the name is taken by another tool")
        elif tool is None:
            _create(upstream, imported, enabled=enable_new, actor=actor)
            report.imported.append(name)
        elif _update(tool, imported, actor=actor):
            report.changed.append(name)
        else:
            report.unchanged.append(name)
    gone = (
        Tool.objects.select_for_update()
        .filter(upstream=upstream, available=True)
        .exclude(name__in=offered)
    )
    for tool in gone:
        tool.available = False
        tool.enabled = False
        tool.policy_version += 1
        tool.save(update_fields=["available", "enabled", "policy_version", "updated_at"])
        record(
            action="tool.removed_upstream", actor=actor, tool=tool, data={"upstream": upstream.name}
        )
        report.removed.append(tool.name)
    Upstream.objects.filter(pk=upstream.pk).update(
        last_synced_at=timezone.now(), last_sync_error=""
    )
    return report


def _spec(imported: ImportedTool) -> dict[str, Any]:
    """What the upstream proposed, kept to tell its later changes from an admin's edits."""
    return {"description": imported.description, "risk": imported.risk}


def _create(upstream: Upstream, imported: ImportedTool, *, enabled: bool, actor: Any) -> Tool:
    tool = Tool.objects.create(
        name=imported.name,
        description=imported.description,
        input_schema=imported.input_schema,
        output_schema=imported.output_schema,
        risk=imported.risk,
        version=_version(
            imported.name,
            imported.description,
            imported.input_schema,
            risk=imported.risk,
            operation=imported.operation,
        ),
        overwrites=imported.overwrites,
        idempotent=imported.idempotent,
        open_world=imported.open_world,
        upstream=upstream,
        upstream_name=imported.source_name,
        upstream_operation=imported.operation,
        upstream_spec=_spec(imported),
        **{**defaults_for(imported.risk).as_fields(), "enabled": enabled},
    )
    record(
        action="tool.imported",
        actor=actor,
        tool=tool,
        data={
            "upstream": upstream.name,
            "source": imported.source_name,
            "risk": imported.risk,
            "version": tool.version,
            "enabled": enabled,
        },
    )
    return tool


def _update(tool: Tool, imported: ImportedTool, *, actor: Any) -> bool:
    """Bring an imported tool up to date; whether anything changed."""
    proposed = tool.upstream_spec or {}
    values: dict[str, Any] = {
        "input_schema": imported.input_schema,
        "output_schema": imported.output_schema,
        "overwrites": imported.overwrites,
        "idempotent": imported.idempotent,
        "open_world": imported.open_world,
        "upstream_name": imported.source_name,
        "upstream_operation": imported.operation,
        "upstream_spec": _spec(imported),
    }
    # An admin's description and risk stand; the upstream's changes reach the tool only
    # where the tool still has what the upstream proposed before.
    for name in ("description", "risk"):
        if getattr(tool, name) == proposed.get(name):
            values[name] = getattr(imported, name)
    changed = {k: v for k, v in values.items() if getattr(tool, k) != v}
    if not tool.available:
        changed["available"] = True  # back upstream; it stays disabled until an admin enables it
    if "risk" in changed:
        changed.update(policy_for_new_risk(tool, changed["risk"], imported.input_schema))
    version = _version(
        tool.name,
        changed.get("description", tool.description),
        changed.get("input_schema", tool.input_schema),
        risk=changed.get("risk", tool.risk),
        operation=values["upstream_operation"],
    )
    if version != tool.version:
        changed["version"] = version
    if not changed:
        return False
    visible = sorted(set(changed) - {"upstream_spec", "upstream_operation"})
    before = {k: getattr(tool, k) for k in visible if k not in ("input_schema", "output_schema")}
    for key, value in changed.items():
        setattr(tool, key, value)
    tool.save(update_fields=[*changed, "updated_at"])
    if visible:
        record(
            action="tool.changed",
            actor=actor,
            tool=tool,
            data={
                "upstream": tool.upstream.name if tool.upstream else "",
                "fields": visible,
                "before": before,
                "after": {k: changed[k] for k in before},
                "new_version": "version" in changed,
            },
        )
    return bool(visible)


@transaction.atomic
def set_upstream_enabled(*, upstream: Upstream, enabled: bool, changed_by: Any) -> Upstream:
    """Switch an upstream off (its tools can no longer run: none is available) or back on
    (its tools come back with the next sync, which the caller runs)."""
    locked = Upstream.objects.select_for_update().get(pk=upstream.pk)
    if locked.enabled == enabled:
        return locked
    locked.enabled = enabled
    locked.save(update_fields=["enabled"])
    if not enabled:
        Tool.objects.filter(upstream=locked).update(available=False, updated_at=timezone.now())
    record(
        action="upstream.enabled" if enabled else "upstream.disabled",
        actor=changed_by,
        data={"upstream": locked.name},
    )
    return locked


@transaction.atomic
def edit_imported_tool(
    *, tool: Tool, description: str | None = None, risk: str | None = None, changed_by: Any
) -> Tool:
    """An admin's own description or risk for an imported tool; re-syncs keep them. A new
    description is a new version (approvals of the old one no longer hold); a new risk
    resets the policy fields that risk class does not allow to its defaults."""
    locked = Tool.objects.select_for_update(of=("self",)).get(pk=tool.pk)
    if locked.upstream_id is None:
        raise ValueError("Only an imported tool's description and risk may be edited.")
    changed: dict[str, Any] = {}
    if description is not None and description != locked.description:
        changed["description"] = description
    if risk is not None and risk != locked.risk:
        changed["risk"] = risk
        changed.update(policy_for_new_risk(locked, risk, locked.input_schema))
    if not changed:
        return locked
    before = {k: getattr(locked, k) for k in changed}
    for key, value in changed.items():
        setattr(locked, key, value)
    locked.version = _version(
        locked.name,
        locked.description,
        locked.input_schema,
        risk=locked.risk,
        operation=locked.upstream_operation,
    )
    locked.policy_version += 1
    locked.save(update_fields=[*changed, "version", "policy_version", "updated_at"])
    record(
        action="tool.edited",
        actor=changed_by,
        tool=locked,
        data={
            "before": before,
            "after": {k: getattr(locked, k) for k in changed},
            "version": locked.version,
        },
    )
    return locked


def _version(
    name: str, description: str, schema: dict[str, Any], *, risk: str, operation: Any
) -> str:
    """An imported tool's version: what it is, and what a call of it does upstream (its
    risk; for an HTTP API, the method, path and server). An approved POST never runs as the
    DELETE a re-synced document put under the same operationId."""
    return tool_version(name, description, schema, runs={"risk": risk, "operation": operation})
