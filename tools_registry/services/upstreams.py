"""Upstreams and the tools imported from them: registered, re-synced, switched off.

A sync reads the whole offer first (over the network, outside any transaction); only a
readable offer changes anything, in one transaction: new tools are created (disabled
unless asked for), changed tools take the upstream's schemas and hints, and its
description and risk unless an admin edited them; a tool gone from the upstream is
disabled, not deleted. Every change is audited (``tool.imported``, ``tool.changed``,
``tool.removed_upstream``); header values never are, only their names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.display import escape_hidden
from audit.log import record
from core.hosts import host_and_port
from core.json_values import storable
from tools_registry import sources
from tools_registry.models import Tool, Upstream, without_password
from tools_registry.policy import POLICY_FIELDS, Risk, defaults_for
from tools_registry.registry import tool_version
from tools_registry.services.policies import policy_drift
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
    # Switched off because the upstream's new schema broke their policy: "name: why".
    disabled: list[str] = field(default_factory=list)


@transaction.atomic
def register_upstream(
    *,
    name: str,
    kind: str,
    url: str,
    base_url: str = "",
    headers: secrets.Headers = (),  # type: ignore[assignment]
    timeout_seconds: float = 10,
    idempotency_header: str = "",  # none unless named: see Upstream.idempotency_header
    rerunnable: bool = False,
    enabled: bool = True,
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
        enabled=enabled,
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
            "enabled": enabled,
        },
    )
    return upstream


@transaction.atomic
def delete_upstream(*, upstream: Upstream, deleted_by: Any) -> None:
    """Delete an upstream that has no tools (its tools refer to it: ``ProtectedError``
    otherwise), its stored headers with it; audited with where it was and the names of
    those headers."""
    locked = Upstream.objects.select_for_update().get(pk=upstream.pk)
    data = {
        "upstream": locked.name,
        "kind": locked.kind,
        "url": without_password(locked.url),
        "base_url": without_password(locked.base_url),
        "header_names": list(locked.header_names),
    }
    locked.delete()
    record(action="upstream.deleted", actor=deleted_by, data=data)


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


@transaction.atomic
def reencrypt_headers(*, upstream: Upstream, rotated_by: Any = None) -> Upstream:
    """Encrypt the upstream's stored headers again with the first key of
    ``UPSTREAM_SECRETS_KEY`` (``secrets.reencrypt``), so the keys after it can be retired;
    audited by name only. ``SecretsUnreadable`` when no key reads them (left as they are)."""
    # Locked: headers an admin saves meanwhile are not overwritten with the old ones.
    locked = Upstream.objects.select_for_update().get(pk=upstream.pk)
    if not locked.headers_encrypted:
        return locked
    locked.headers_encrypted = secrets.reencrypt(locked.headers_encrypted)
    locked.save(update_fields=["headers_encrypted"])
    record(
        action="upstream.headers_reencrypted",
        actor=rotated_by,
        data={"upstream": locked.name, "header_names": list(locked.header_names)},
    )
    return locked


# What an admin may change of a registered upstream (its name and kind stay).
SETTINGS = ("url", "base_url", "timeout_seconds", "idempotency_header", "rerunnable")


@transaction.atomic
def update_upstream(
    *,
    upstream: Upstream,
    changes: Mapping[str, Any],
    headers: secrets.Headers | None = None,
    changed_by: Any,
) -> Upstream:
    """Change where an upstream is and how it is called; audited (``upstream.changed``,
    before and after). Credentials go only where an admin sent them: a new host drops the
    stored headers unless new ones come with the change. A new endpoint makes each of its
    tools a new version, so a call approved for the old one is refused, never sent to the
    new one."""
    if unknown := set(changes) - set(SETTINGS):
        raise ValueError(f"not upstream settings: {sorted(unknown)}")
    locked = Upstream.objects.select_for_update().get(pk=upstream.pk)
    changed = {k: v for k, v in changes.items() if getattr(locked, k) != v}
    # A URL as the pages show it: one stored before a user and password in it were refused
    # still holds them (a token as its user, which the trail's masking does not know).
    before = {k: _shown(k, getattr(locked, k)) for k in changed}
    hosts_before = {_host(locked.url), _host(locked.base_url)}
    endpoint_before = _endpoint(locked)
    for name, value in changed.items():
        setattr(locked, name, value)
    locked.full_clean(exclude=["headers_encrypted", "header_names"])
    dropped: list[str] = []
    if (
        headers is None
        and locked.header_names
        and {_host(locked.url), _host(locked.base_url)} - hosts_before
    ):
        dropped = list(locked.header_names)
        _set_headers(locked, [])
        changed = {**changed, "header_names": []}
    locked.save(update_fields=[*changed, "headers_encrypted"] if dropped else [*changed])
    if changed:
        record(
            action="upstream.changed",
            actor=changed_by,
            data={
                "upstream": locked.name,
                "before": before,
                "after": {k: _shown(k, v) for k, v in changed.items() if k != "header_names"},
                "headers_dropped": dropped,
            },
        )
    if headers is not None:
        set_headers(upstream=locked, headers=headers, changed_by=changed_by)
    if _endpoint(locked) != endpoint_before:
        for tool in Tool.objects.select_for_update().filter(upstream=locked).order_by("pk"):
            _rebind(tool, locked, actor=changed_by)
    return locked


def _shown(setting: str, value: Any) -> Any:
    return without_password(value) if setting in ("url", "base_url") else value


def _host(url: str) -> str:
    """Where ``url``'s requests go: its scheme, host and port. Not a user and password in
    it: taking them out of a stored URL (``no_credentials_in_url``) sends nothing elsewhere,
    and the headers stored for the host stay."""
    parts = urlsplit(url or "")
    host = host_and_port(parts)
    return f"{parts.scheme}://{host}".lower() if host else ""


def _endpoint(upstream: Upstream) -> str:
    """Where a call of the upstream's tools goes, as an admin set it: an MCP server's URL;
    an HTTP API's base URL (empty: each operation's server, part of its version already)."""
    return upstream.url if upstream.kind == Upstream.Kind.MCP else upstream.base_url


def _rebind(tool: Tool, upstream: Upstream, *, actor: Any) -> None:
    tool.upstream = upstream  # as just changed, not read again
    version = _version_of(tool)
    if version == tool.version:
        return
    before = tool.version
    tool.version = version
    tool.save(update_fields=["version", "updated_at"])
    record(
        action="tool.changed",
        actor=actor,
        tool=tool,
        data={
            "upstream": upstream.name,
            "fields": ["endpoint"],
            "before": {"version": before},
            "after": {"version": version},
            "new_version": True,
        },
    )


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
        # It may quote the upstream (a $ref, a server's error, the part of a document its
        # validator refused, which may echo what it was sent): without the credentials, and
        # storable, or the failure to store it would be the sync's only answer.
        message = storable(_without_credentials(message, upstream))
        with transaction.atomic():
            Upstream.objects.filter(pk=upstream.pk).update(last_sync_error=message[:2000])
            record(
                action="upstream.sync_failed",
                actor=actor,
                outcome="failed",
                data={"upstream": upstream.name, "error": message},
            )
        raise ImportFailed(message) from None
    # What was left out is said to the admin and audited, quoting the upstream: as above.
    # The headers are decrypted once for all of it (a big document skips thousands).
    if headers := _sent_headers(upstream):
        offer.skipped = [secrets.without_credentials(r, headers) for r in offer.skipped]
        offer.tools = _definitions_without_credentials(offer.tools, headers)
    offer.tools = [_hidden_written_out(tool) for tool in offer.tools]
    return _apply(upstream, offer, actor=actor, enable_new=enable_new)


def _hidden_written_out(tool: ImportedTool) -> ImportedTool:
    """The tool with the hidden characters of its description, and of its schemas' titles
    and descriptions, written out (``<U+E0041>``: ``audit.display.escape_hidden``): every
    agent's model reads them in tools/list, and the admin who reads the tool before enabling
    it saw nothing where the model read words (instructions in Unicode tag characters)."""
    return dataclasses.replace(
        tool,
        description=escape_hidden(tool.description),
        input_schema=_schema_written_out(tool.input_schema),
        output_schema=(
            _schema_written_out(tool.output_schema) if tool.output_schema is not None else None
        ),
    )


def _schema_written_out(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: escape_hidden(value)
            if key in ("title", "description") and isinstance(value, str)
            else _schema_written_out(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_schema_written_out(item) for item in node]
    return node


def _definitions_without_credentials(
    tools: list[ImportedTool], headers: secrets.Headers
) -> list[ImportedTool]:
    """The tools' descriptions and schemas without the upstream's header values: a document
    served to whoever is signed in may quote their key (personalised API docs fill it in as
    an example or a default), and a definition is the agent's to read, stored, audited and
    exported, as an answer is (``secrets.answer_without_credentials``)."""
    return [
        dataclasses.replace(
            tool,
            description=secrets.without_credentials(tool.description, headers),
            input_schema=secrets.answer_without_credentials(tool.input_schema, headers),
            output_schema=(
                secrets.answer_without_credentials(tool.output_schema, headers)
                if tool.output_schema is not None
                else None
            ),
        )
        for tool in tools
    ]


def _sent_headers(upstream: Upstream) -> secrets.Headers:
    """The header values sent to the upstream, which nothing it says may be kept with; none
    when they cannot be read (then nothing was sent with them)."""
    try:
        return secrets.decrypt(upstream.headers_encrypted)
    except secrets.SecretsUnreadable:
        return []


def _without_credentials(text: str, upstream: Upstream) -> str:
    """``text`` (what an upstream said) without the upstream's header values."""
    return secrets.without_credentials(text, _sent_headers(upstream))


@transaction.atomic
def _apply(upstream: Upstream, offer: Offer, *, actor: Any, enable_new: bool) -> UpstreamSync:
    # Locked as a switch-off locks it, which then takes its tools out: one that came while
    # the offer was read (outside any transaction) would have its tools made available again
    # below, as back upstream, and run against an upstream an admin switched off. Read again
    # with the lock: an admin who moved it meanwhile rebound the tools there were to the new
    # endpoint (``update_upstream``), and a tool created here is bound to it too.
    locked = Upstream.objects.select_for_update().filter(pk=upstream.pk, enabled=True).first()
    if locked is None:
        raise ImportFailed(
            f"The upstream {upstream.name} was switched off while its tools were read; "
            "nothing changes."
        )
    upstream = locked
    report = UpstreamSync(skipped=list(offer.skipped))
    offered = {t.name: t for t in offer.tools}
    # The row locks make two syncs of one upstream (an admin and a deploy) apply in turn.
    # Each tool's upstream (its endpoint, its hosts) is read with it: alone, it was one
    # query per tool, 20,000 for an API of 20,000 operations that had not changed.
    # Every tool this may change, offered or gone (below), locked in one statement in the
    # order of their ids, as every change that locks several tools (``grants.hold_reviews_of``):
    # in two batches, each in id order, a sync holding an offered tool waited for a gone one
    # of a lower id that a person's deactivation held while waiting for the offered one.
    existing = {
        t.name: t
        for t in Tool.objects.select_for_update(of=("self",))
        .select_related("upstream")
        .filter(Q(name__in=offered) | Q(upstream=upstream, available=True))
        .order_by("pk")
        if t.name in offered
    }
    # New tools are inserted a batch at a time (a big API's first import was one INSERT per
    # operation), their events written below in the offer's order, as one by one.
    created = {
        t.name: t
        for t in Tool.objects.bulk_create(
            [
                _new_tool(upstream, imported, enabled=enable_new)
                for name, imported in offered.items()
                if name not in existing
            ],
            batch_size=CREATED_PER_INSERT,
        )
    }
    for name, imported in offered.items():
        tool = existing.get(name)
        if tool is not None and tool.upstream_id != upstream.pk:
            report.skipped.append(f"{name}: the name is taken by another tool")
        elif tool is None:
            _imported(created[name], imported, upstream=upstream, actor=actor)
            report.imported.append(name)
        elif _update(tool, imported, actor=actor, disabled=report.disabled):
            report.changed.append(name)
        else:
            report.unchanged.append(name)
    gone = (
        Tool.objects.select_for_update()  # locked above already
        .filter(upstream=upstream, available=True)
        .exclude(name__in=offered)
        .order_by("pk")
    )
    # Offered but left out (its schema, its name...): the trail says why, not only "gone".
    left_out = dict(reason.split(": ", 1) for reason in offer.skipped if ": " in reason)
    for tool in gone:
        tool.available = False
        tool.enabled = False
        tool.policy_version += 1
        tool.save(update_fields=["available", "enabled", "policy_version", "updated_at"])
        data = {"upstream": upstream.name}
        if why := next((left_out[k] for k in _offered_as(tool) if k in left_out), None):
            # It may quote the upstream (a $ref it could not resolve): storable, as a failure.
            data["left_out"] = storable(why[:300])
        record(action="tool.removed_upstream", actor=actor, tool=tool, data=data)
        report.removed.append(tool.name)
    Upstream.objects.filter(pk=upstream.pk).update(
        last_synced_at=timezone.now(), last_sync_error=""
    )
    return report


def _offered_as(tool: Tool) -> list[str]:
    """What an offer calls ``tool`` when it leaves it out: its name (a duplicate, a
    definition that cannot be stored), an MCP tool's own name, an operation's method and
    path (``offers``: each reader says what it was reading)."""
    said = [tool.name, tool.upstream_name]
    if operation := tool.upstream_operation:
        said.append(f"{operation.get('method')} {operation.get('path')}")
    return said


def _spec(imported: ImportedTool) -> dict[str, Any]:
    """What the upstream proposed, kept to tell its later changes from an admin's edits."""
    return {"description": imported.description, "risk": imported.risk}


# Tools one INSERT creates on import: each row holds its schemas, so a statement holds
# at most this many, however many operations the API has.
CREATED_PER_INSERT = 100


def _new_tool(upstream: Upstream, imported: ImportedTool, *, enabled: bool) -> Tool:
    """The tool ``imported`` becomes, not yet saved."""
    return Tool(
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
            endpoint=_endpoint(upstream),
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


def _imported(tool: Tool, imported: ImportedTool, *, upstream: Upstream, actor: Any) -> None:
    """Audit the import of ``tool``, just created from ``imported``."""
    record(
        action="tool.imported",
        actor=actor,
        tool=tool,
        data={
            "upstream": upstream.name,
            "source": imported.source_name,
            "risk": imported.risk,
            "version": tool.version,
            "enabled": tool.enabled,
        },
        later=True,  # with the next statement: one round trip for all of an import's events
    )


# Whose calls wait for more people: a lower rank asks for fewer approvals (a read for none).
RISK_RANK: dict[str, int] = {Risk.READ: 0, Risk.WRITE: 1, Risk.DESTRUCTIVE: 2}


def _update(tool: Tool, imported: ImportedTool, *, actor: Any, disabled: list[str]) -> bool:
    """Bring an imported tool up to date; whether anything changed. A new schema that its
    policy no longer fits (a rule reading an argument renamed upstream, a sensitive field
    gone) would leave the rule erring on every call and the field unmasked: the tool is
    switched off until an admin mends its policy (noted in ``disabled``)."""
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
    rank = RISK_RANK.get
    if rank(imported.risk, 0) > max(rank(tool.risk, 0), rank(str(proposed.get("risk")), 0)):
        # The upstream now proposes more than it did and than the admin's risk: the edit was
        # of what the tool was (a read, of a search its server annotated as nothing), and
        # kept, the tool its server now calls destructive would run at once.
        values["risk"] = imported.risk
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
        endpoint=_endpoint(tool.upstream) if tool.upstream else "",
    )
    if version != tool.version:
        changed["version"] = version
    if not changed:
        return False
    visible = sorted(set(changed) - {"upstream_spec", "upstream_operation"})
    before = {k: getattr(tool, k) for k in visible if k not in ("input_schema", "output_schema")}
    moved_to = _new_server_host(tool, imported)
    reran = sources.reruns_without_a_person(tool)
    for key, value in changed.items():
        setattr(tool, key, value)
    drift = policy_drift(tool) if "input_schema" in changed and tool.enabled else []
    if tool.enabled and "risk" in changed and RISK_RANK[tool.risk] < RISK_RANK[before["risk"]]:
        # The upstream alone must not take a tool out of review: a write it now calls a read
        # would run at once, unseen. It waits for an admin, as a new tool does.
        drift.append(
            f"risk: the upstream now calls it {tool.risk} (it was {before['risk']}), which "
            "asks fewer people; an admin enables it again"
        )
    if tool.enabled and moved_to:
        # Calls carry the upstream's credentials to the document's server: the document
        # alone never sends them to a host no admin named, as a redirect would not.
        drift.append(
            f"server: the upstream's document now sends its calls to {moved_to}, a host no "
            "admin set; an admin enables it again"
        )
    if (
        tool.enabled
        and tool.risk != Risk.DESTRUCTIVE  # never re-run by itself (``recovery``)
        and not reran
        and sources.reruns_without_a_person(tool)
    ):
        # Its version stays (what a call does is the same), but an unknown outcome of it
        # would be sent again by itself, a second effect on a server that ignores keys,
        # where a person decided: the upstream alone never takes that decision from one.
        drift.append(
            "re-runs: the upstream now says repeating a call changes nothing "
            "(idempotentHint), so a call whose outcome is unknown would be sent again with "
            "no person asked; an admin enables it again"
        )
    if drift:
        before["enabled"], changed["enabled"], tool.enabled = True, False, False
        visible = sorted({*visible, "enabled"})
        disabled.append(f"{tool.name}: {'; '.join(drift)}")
    if any(name in POLICY_FIELDS for name in changed):
        # A new risk's defaults, or the tool switched off: calls bind the policy's version.
        changed["policy_version"] = tool.policy_version = tool.policy_version + 1
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
                **({"disabled_because": drift} if drift else {}),
            },
        )
    return bool(visible)


def _new_server_host(tool: Tool, imported: ImportedTool) -> str:
    """The host an HTTP tool's calls now go to, if the upstream's document moved them there
    (its first server): neither where they went nor a host an admin set; else empty."""
    before = _host((tool.upstream_operation or {}).get("base_url", ""))
    after = _host((imported.operation or {}).get("base_url", ""))
    upstream = tool.upstream
    named = {_host(upstream.url), _host(upstream.base_url)} if upstream else set()
    return after if after and after != before and after not in named else ""


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
        # Its tools locked first in the order of their ids, as every change that locks several
        # tools (``grants.hold_reviews_of``): an UPDATE alone takes them in the order it finds
        # them on disk, which a tool changed since upsets, and met such a change in a deadlock.
        tools = Tool.objects.filter(upstream=locked)
        list(tools.select_for_update().order_by("pk").values_list("pk", flat=True))
        tools.update(available=False, updated_at=timezone.now())
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
    locked.version = _version_of(locked)
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


def _version_of(tool: Tool) -> str:
    """``_version`` of an imported tool as it stands."""
    return _version(
        tool.name,
        tool.description,
        tool.input_schema,
        risk=tool.risk,
        operation=tool.upstream_operation,
        endpoint=_endpoint(tool.upstream) if tool.upstream else "",
    )


def _version(
    name: str,
    description: str,
    schema: dict[str, Any],
    *,
    risk: str,
    operation: Any,
    endpoint: str,
) -> str:
    """An imported tool's version: what it is, and what a call of it does upstream (its
    risk; for an HTTP API, the method, path and server) and where it goes (the endpoint an
    admin set). An approved POST never runs as the DELETE a re-synced document put under
    the same operationId, nor at another host than the one it was approved for."""
    runs: dict[str, Any] = {"risk": risk, "operation": operation}
    if endpoint:
        runs["endpoint"] = endpoint
    return tool_version(name, description, schema, runs=runs)
