"""Where a tool's implementation lives: a handler registered in code (``@tool``), or an
upstream (an HTTP API or an MCP server, imported by an admin). The executor, the
reconciliation and the reviewer's preview all get a tool's implementation here, in the
same shape (``RegisteredTool``), whatever its source.
"""

from __future__ import annotations

from typing import Any

from tools_registry import facts, registry
from tools_registry.models import Tool, Upstream
from tools_registry.policy import Risk
from tools_registry.registry import LookupResult, RegisteredTool, ToolContext, ToolFailed
from tools_registry.upstreams import http, mcp, secrets

JSON = dict[str, Any]
PREVIEW_ARGUMENTS = 4


def implementation(tool: Tool) -> RegisteredTool:
    """The tool's implementation; ``registry.UnknownTool`` if it has none any more."""
    if tool.upstream_id is None:
        return registry.get(tool.name)
    upstream = tool.upstream
    assert upstream is not None
    if upstream.kind == Upstream.Kind.OPENAPI:
        return _http_tool(tool, upstream)
    return _mcp_tool(tool, upstream)


def facts_of(tool: Tool) -> facts.Facts:
    """Where a tool's facts (amount, recipient, target) are in its arguments: declared in
    its code, or found from its schema (always, for imported tools)."""
    if tool.upstream_id is None:
        try:
            declared = registry.get(tool.name).facts
        except registry.UnknownTool:
            declared = None
        if declared is not None:
            return declared
    return facts.infer(tool.input_schema)


def _registered(tool: Tool, handler: Any, **extra: Any) -> RegisteredTool:
    return RegisteredTool(
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        risk=tool.risk,
        handler=handler,
        overwrites=tool.overwrites,
        idempotent=tool.idempotent,
        open_world=tool.open_world,
        output_schema=tool.output_schema,
        preview_fn=lambda arguments: preview(tool, arguments),
        **extra,
    )


def _headers(upstream: Upstream) -> secrets.Headers:
    """The upstream's headers, decrypted just before its request. ``ToolFailed`` when they
    cannot be (the keys changed since an admin entered them): nothing is sent, so the call
    did not run; it is no unknown outcome for a person to settle."""
    try:
        return secrets.decrypt(upstream.headers_encrypted)
    except secrets.SecretsUnreadable as unreadable:
        raise ToolFailed(str(unreadable), code="upstream_headers_unreadable", unsent=True) from None


def _http_tool(tool: Tool, upstream: Upstream) -> RegisteredTool:
    operation: JSON = tool.upstream_operation or {}
    base_url = upstream.base_url or operation.get("base_url", "")

    def handler(ctx: ToolContext, arguments: JSON) -> JSON:
        return http.call(
            operation=operation,
            base_url=base_url,
            upstream_headers=_headers(upstream),
            idempotency_header=upstream.idempotency_header,
            key=ctx.idempotency_key,
            arguments=arguments,
            timeout=ctx.timeout,
        )

    lookup_fn = None
    # A lookup asks the API by the call's key, which only the idempotency header carries:
    # an API never sent it has no record of any key, and its "not found" would tell the
    # person an effect that happened did not.
    if operation.get("lookup") and upstream.idempotency_header:

        def lookup_fn(ctx: ToolContext) -> LookupResult:
            return http.lookup(
                lookup=operation["lookup"],
                base_url=base_url,
                upstream_headers=secrets.decrypt(upstream.headers_encrypted),
                key=ctx.idempotency_key,
                timeout=ctx.timeout,
            )

    keyed = reruns_without_a_person(tool)
    return _registered(
        tool,
        handler,
        honours_idempotency_key=keyed,
        rerun_reconciles=keyed,
        lookup_fn=lookup_fn,
    )


def _mcp_tool(tool: Tool, upstream: Upstream) -> RegisteredTool:
    def handler(ctx: ToolContext, arguments: JSON) -> JSON:
        return mcp.call(
            url=upstream.url,
            headers=_headers(upstream),
            tool=tool.upstream_name,
            arguments=arguments,
            key=ctx.idempotency_key,
            timeout=ctx.timeout,
        )

    rerunnable = reruns_without_a_person(tool)
    return _registered(
        tool, handler, honours_idempotency_key=rerunnable, rerun_reconciles=rerunnable
    )


def reruns_without_a_person(tool: Tool) -> bool:
    """Whether a call of the imported ``tool`` whose outcome is unknown is sent again with
    its key by itself, no person asked. An HTTP API: when it honours an idempotency header
    (an admin's setting). An MCP server has no standard lookup: only when an admin marked
    the server's tools safe to re-run, or the tool says a repeat changes nothing. A tool the
    server marks readOnlyHint is idempotent as a read, which says nothing of a repeat once
    an admin made it a write (MCP reads idempotentHint only of a tool that is not read-only)."""
    upstream = tool.upstream
    assert upstream is not None
    if upstream.kind == Upstream.Kind.OPENAPI:
        return bool(upstream.idempotency_header)
    said_read = (tool.upstream_spec or {}).get("risk", tool.risk) == Risk.READ
    return upstream.rerunnable or (tool.idempotent and not said_read)


def preview(tool: Tool, arguments: Any) -> str:
    """What approving an imported tool's call does, from its definition: the operation or
    tool, where, and its first few plain arguments."""
    assert tool.upstream is not None
    operation = tool.upstream_operation or {}
    if operation:
        what = f"{operation.get('method', '')} {operation.get('path', '')}".strip()
    else:
        what = f"Runs {tool.upstream_name}"
    plain = [
        f"{name}={value}"
        for name, value in (arguments or {}).items()
        if isinstance(value, str | int | float | bool)
    ][:PREVIEW_ARGUMENTS]
    where = f" on {tool.upstream.name}"
    return f"{what}{where}" + (f": {', '.join(plain)}" if plain else "") + "."
