"""Countersign's MCP server: the official SDK's low-level ``Server`` with Countersign's
handlers. Protocol work (JSON-RPC, version negotiation, both protocol eras, progress,
errors) is the SDK's; what a tool list or a tool call means is Countersign's.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from uuid import UUID

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from gateway import end_users, errors, waits
from gateway.mcp import calls, sessions, state, tasks, waiting
from gateway.mcp.calls import Caller, caller_of
from gateway.mcp.state import CallState
from gateway.mcp.threads import run_sync
from tools_registry import role_scopes
from tools_registry.exports import mcp_tool

INSTRUCTIONS = (
    "Countersign stands between you and these tools. Tools that only read answer at once. "
    "Tools that change something (send, update, refund, delete) wait for a person to approve "
    "the exact call: you get its result once it is approved and has run, or a pending answer "
    "with a call id; then call countersign_wait with that id instead of calling the tool "
    "again. A rejection carries the reviewer's reason: tell the user, and do not retry a "
    "rejected call. Errors say what went wrong and what to do next in their suggestion."
)


def _version() -> str:
    try:
        return version("countersign")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0"


def _allowed_tools(caller: Caller, meta: dict[str, Any]) -> list[types.Tool]:
    """The tools the request's end user may call (``gateway.end_users``)."""
    user = end_users.listing_user(
        caller.agent,
        on_behalf_of=caller.on_behalf_of_in(meta),
        user_token=caller.user_token_of(meta),
        transport="mcp",
        client=caller.client,
    )
    return [mcp_tool(tool) for tool in role_scopes.tools_for(caller.agent, user)]


async def list_tools(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    caller = caller_of(ctx)
    try:
        tools = await run_sync(_allowed_tools, caller, dict(ctx.meta or {}))
    except errors.ApiError as error:
        # Refused for its end user: a JSON-RPC error carrying the REST API's error body.
        raise MCPError(code=INVALID_PARAMS, message=error.message, data=error.body()) from None
    return types.ListToolsResult(tools=[*tools, calls.WAIT_TOOL_DEFINITION])


async def call_tool(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    caller = caller_of(ctx)
    meta = dict(ctx.meta or {})
    token = meta.get("progress_token")
    progress = _progress_reporter(ctx, token if isinstance(token, str | int) else None)
    # The request, named so that the client's cancel of it ends its wait.
    request = waiting.request_key(caller.agent.pk, caller.session_id, ctx.request_id)
    if params.name == calls.WAIT_TOOL:
        return await _wait_tool(caller, params.arguments or {}, progress, request)
    submitted = await run_sync(calls.submit, caller, params.name, params.arguments or {}, meta)
    # A read that ran long: the token is asked again, as a wait asks it, so that one revoked
    # meanwhile (its agent disabled or stopped) is not handed the result. Only then: a quick
    # answer costs no second look-up.
    ran_long = time.monotonic() - caller.authenticated_at > waiting.RECHECK_SECONDS
    if ran_long and not await run_sync(caller.still_allowed):
        return calls.error_result(errors.not_authenticated().body())
    call = submitted.call
    if submitted.status >= 400 or call is None or call.risk == "read":
        return calls.read_result(submitted)
    settled = await _waited(caller, call.id, calls.wait_seconds(meta), progress, request)
    if isinstance(settled, types.CallToolResult):
        return settled
    assert settled is not None  # the agent's own call, which is never deleted
    return calls.settled_result(settled) if settled.terminal else calls.pending_result(settled)


async def _wait_tool(
    caller: Caller, arguments: dict[str, Any], progress: waiting.Tick | None, request: str | None
) -> types.CallToolResult:
    try:
        # In a worker thread, as a tool's arguments are checked: thousands of made-up names
        # take a check tens of milliseconds, which the event loop's other requests would wait.
        call_id, seconds = await run_sync(calls.wait_arguments, arguments)
    except errors.ApiError as error:
        return calls.error_result(error.body())
    call = await _waited(caller, call_id, seconds, progress, request)
    if isinstance(call, types.CallToolResult):
        return call
    if call is None:
        return calls.error_result(errors.call_not_found().body())
    return calls.settled_result(call) if call.terminal else calls.pending_result(call)


async def _waited(
    caller: Caller,
    call_id: UUID,
    seconds: float,
    progress: waiting.Tick | None,
    request: str | None,
) -> CallState | types.CallToolResult | None:
    """The call after waiting up to ``seconds`` for it to end; as it stands at once when the
    agent has too many waits open, or when the client cancelled the request (it reads no
    answer then); an error result if the caller's token was revoked (or its agent disabled
    or stopped) meanwhile."""
    try:
        return await waiting.until_settled(
            agent=caller.agent,
            call_id=call_id,
            timeout=seconds,
            on_tick=progress,
            still_allowed=caller.still_allowed,
            request=request,
        )
    except (waits.TooManyWaits, waiting.Cancelled):
        return await run_sync(state.read, caller.agent, call_id)
    except waiting.CallerGone:
        return calls.error_result(errors.not_authenticated().body())


def _progress_reporter(
    ctx: ServerRequestContext[Any, Any], token: str | int | None
) -> waiting.Tick | None:
    """Progress notifications while a call waits, when the client gave a progress token."""
    if token is None:
        return None

    async def report(call: CallState, waited: float) -> None:
        await ctx.session.send_progress_notification(
            token,
            progress=round(waited, 1),
            message=call.status_message,
            related_request_id=ctx.request_id,  # type: ignore[arg-type]
        )

    return report


class CapabilitiesAndSessions:
    """Server middleware around ``initialize``: records the client's session (its name and
    version, for the audit trail) and adds the task capability on the revision that has it."""

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "initialize" or not isinstance(result, dict):
            return result
        if result.get("protocolVersion") == tasks.TASKS_REVISION:
            result.setdefault("capabilities", {})["tasks"] = tasks.CAPABILITY
        request_state = ctx.request.state  # type: ignore[union-attr]
        opening = getattr(request_state, "opening_session", None)
        if opening is not None:
            client = (ctx.params or {}).get("clientInfo") or {}
            await run_sync(
                sessions.open_session,
                session_id=opening,
                agent=request_state.countersign.agent,
                client_name=str(client.get("name", "")),
                client_version=str(client.get("version", "")),
                protocol_version=str(result.get("protocolVersion", "")),
            )
        return result


def _no_header_parameters(tool: str) -> None:
    return None


def build_server() -> Server[Any]:
    server: Server[Any] = Server(
        "countersign",
        version=_version(),
        title="Countersign",
        description="Human approval for AI agents' tool calls.",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        # Countersign's tools declare no x-mcp-header, so no Mcp-Param-* header has a schema
        # to be checked against. Without this the SDK runs the tools/list handler (the
        # caller's, with its end user's checks and their audit) before each modern tools/call.
        get_tool_input_schema=_no_header_parameters,
    )
    server.middleware.extend([CapabilitiesAndSessions(), tasks.TaskAugmentedCalls()])
    for method, params_type, handler in tasks.HANDLERS:
        server.add_request_handler(method, params_type, handler)
    return server
