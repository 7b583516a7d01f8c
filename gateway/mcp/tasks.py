"""MCP tasks (protocol revision 2025-11-25) for calls that wait for a person.

A client that sends ``tools/call`` with a ``task`` gets a ``CreateTaskResult`` at once:
the task is the call (its id is the call's id), so it survives the client's reconnect and
Countersign's restart. ``tasks/get`` says where the call stands, ``tasks/result`` waits for
its end and answers with the final ``CallToolResult``, ``tasks/list`` lists the agent's
open calls, ``tasks/cancel`` withdraws a call still waiting for approval. A task of another
agent is "not found", never its data.

The SDK defines these messages as types only, so the handlers are registered here; later
revisions moved tasks to an extension, which these methods do not serve.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND

from approvals.models import TERMINAL_STATUSES, ToolCall
from approvals.services.calls import cancel_call
from approvals.transitions import InvalidTransition
from gateway import errors, waits
from gateway.mcp import calls, state, waiting
from gateway.mcp.calls import Caller
from gateway.mcp.state import CallState
from gateway.mcp.threads import run_sync
from gateway.selectors import calls_of_agent

TASKS_REVISION = "2025-11-25"
POLL_INTERVAL_MS = 5000
PAGE_SIZE = 50
RELATED_TASK = "io.modelcontextprotocol/related-task"
# What the server says it can do with tasks, in its capabilities (2025-11-25 only).
CAPABILITY: dict[str, Any] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}


def task_of(call: CallState) -> types.Task:
    return types.Task(
        task_id=str(call.id),
        status=call.task_status,  # type: ignore[arg-type]
        status_message=call.status_message,
        created_at=_iso(call.created_at),
        last_updated_at=_iso(call.updated_at),
        ttl=None,  # a call is kept as long as the audit trail: no limit
        poll_interval=POLL_INTERVAL_MS,
    )


def _wire(result: types.Result, task: dict[str, Any] | None = None) -> dict[str, Any]:
    """A task result as JSON. ``ttl`` is sent even when null ("kept without limit"): the
    schema requires the field, and the SDK's own dump would drop a null."""
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    (data["task"] if task is None and "task" in data else data).setdefault("ttl", None)
    return data


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _task_caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    """The caller of a task request, on the revision that has tasks."""
    if ctx.protocol_version != TASKS_REVISION:
        raise MCPError(
            code=METHOD_NOT_FOUND,
            message=f"Tasks are served on protocol revision {TASKS_REVISION}.",
        )
    return calls.caller_of(ctx)


async def _call(caller: Caller, task_id: str) -> CallState:
    try:
        call_id = UUID(task_id)
    except ValueError:
        call_id = None
    call = await run_sync(state.read, caller.agent, call_id) if call_id else None
    if call is None:
        raise MCPError(code=INVALID_PARAMS, message=f"No task {_quoted(task_id)}.")
    return call


# The longest task id quoted whole: a task's id is a UUID (36 characters).
QUOTED_ID_MAX = 40


def _quoted(task_id: str) -> str:
    """The id as the error quotes it: cut short past ``QUOTED_ID_MAX``, as invalid arguments
    are, where a client's 100 KB of it came back whole."""
    if len(task_id) <= QUOTED_ID_MAX:
        return repr(task_id)
    return f"{task_id[:QUOTED_ID_MAX]!r}… ({len(task_id):,} characters)"


class TaskAugmentedCalls:
    """Server middleware: a ``tools/call`` that asks for a task gets one (the SDK's
    ``tools/call`` handler can only answer with a result)."""

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        params = ctx.params or {}
        if ctx.method != "tools/call" or params.get("task") is None:
            return await call_next(ctx)
        caller = _task_caller(ctx)
        request = types.CallToolRequestParams.model_validate(params, by_name=False)
        if request.name == calls.WAIT_TOOL:
            raise MCPError(
                code=METHOD_NOT_FOUND, message=f"{calls.WAIT_TOOL} does not run as a task."
            )
        # Refused before it is submitted: submitting a read runs it, and its result would
        # be lost with the refusal.
        if await run_sync(calls.is_read, caller, request.name, dict(ctx.meta or {})):
            raise _read_is_no_task(request.name)
        submitted = await run_sync(
            calls.submit, caller, request.name, request.arguments or {}, dict(ctx.meta or {})
        )
        call = submitted.call
        if submitted.status >= 400 or call is None:
            # Refused before a task could exist: the same error body as a tool result.
            body = calls.said_for_mcp(submitted.body)
            error = body.get("error", {})
            raise MCPError(code=INVALID_PARAMS, message=error.get("message", "Refused."), data=body)
        if call.risk == "read":  # its risk changed in between
            raise _read_is_no_task(call.tool)
        return _wire(types.CreateTaskResult(task=task_of(call)))


def _read_is_no_task(tool: str) -> MCPError:
    return MCPError(
        code=METHOD_NOT_FOUND,
        message=f"{tool} is a read: it answers at once and does not run as a task.",
    )


async def get_task(
    ctx: ServerRequestContext[Any, Any], params: types.GetTaskRequestParams
) -> dict[str, Any]:
    call = await _call(_task_caller(ctx), params.task_id)
    return _wire(types.GetTaskResult(**task_of(call).model_dump()))


async def task_result(
    ctx: ServerRequestContext[Any, Any], params: types.GetTaskPayloadRequestParams
) -> dict[str, Any]:
    """The call's final ``CallToolResult``; waits (holding no thread) until it ends."""
    caller = _task_caller(ctx)
    call = await _call(caller, params.task_id)
    if not call.terminal:
        try:
            settled = await waiting.until_settled(
                agent=caller.agent,
                call_id=call.id,
                timeout=None,
                still_allowed=caller.still_allowed,
                request=waiting.request_key(caller.agent.pk, caller.session_id, ctx.request_id),
            )
        except waiting.Cancelled:
            # The client no longer reads an answer to it: only the wait had to end.
            raise MCPError(code=INVALID_REQUEST, message="The request was cancelled.") from None
        except waits.WaitsUncounted:
            error = errors.unavailable()
            raise MCPError(code=INTERNAL_ERROR, message=error.message, data=error.body()) from None
        except waits.TooManyWaits:
            error = errors.too_many_waits(waits.limit())
            raise MCPError(code=INTERNAL_ERROR, message=error.message, data=error.body()) from None
        except waiting.CallerGone:
            error = errors.not_authenticated()
            raise MCPError(code=INVALID_REQUEST, message=error.message, data=error.body()) from None
        assert settled is not None  # a call is never deleted
        call = settled
    result = calls.settled_result(call).model_dump(by_alias=True, mode="json", exclude_none=True)
    result["_meta"] = {**result.get("_meta", {}), RELATED_TASK: {"taskId": str(call.id)}}
    return result


async def list_tasks(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams
) -> dict[str, Any]:
    """The agent's calls that have not ended, oldest first, a page at a time."""
    caller = _task_caller(ctx)
    page, next_cursor = await run_sync(_open_calls, caller, params.cursor)
    result = types.ListTasksResult(tasks=[task_of(c) for c in page], next_cursor=next_cursor)
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    for task in data["tasks"]:
        task.setdefault("ttl", None)
    return data


def _open_calls(caller: Caller, cursor: str | None) -> tuple[list[CallState], str | None]:
    open_calls = calls_of_agent(caller.agent).exclude(status__in=TERMINAL_STATUSES)
    open_calls = open_calls.order_by("created_at", "id")
    if cursor:
        try:
            created, call_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
            # In UTC, as this server's cursors are: PostgreSQL refuses offsets that Python
            # reads (+23:59), and an answer quoting it would quote the statement.
            after = (datetime.fromisoformat(created).astimezone(UTC), UUID(call_id))
        except (ValueError, OverflowError, binascii.Error):
            raise MCPError(
                code=INVALID_PARAMS, message="The cursor is not one this server gave."
            ) from None
        open_calls = open_calls.filter(created_at__gte=after[0]).exclude(
            created_at=after[0], id__lte=after[1]
        )
    found: list[ToolCall] = list(open_calls.prefetch_related("decisions")[: PAGE_SIZE + 1])
    page = [state.of(c) for c in found[:PAGE_SIZE]]
    if len(found) <= PAGE_SIZE:
        return page, None
    last = found[PAGE_SIZE - 1]
    token = f"{last.created_at.isoformat()}|{last.pk}".encode()
    return page, base64.urlsafe_b64encode(token).decode()


async def cancel_task(
    ctx: ServerRequestContext[Any, Any], params: types.CancelTaskRequestParams
) -> dict[str, Any]:
    """Withdraw a call still waiting for approval; a call already decided cannot be, nor one
    already ended (cancelled included: the protocol refuses a task in a terminal status)."""
    caller = _task_caller(ctx)
    call = await _call(caller, params.task_id)
    refused = MCPError(
        code=INVALID_PARAMS,
        message=f"The task is {call.status_message}: only a call waiting for approval can be cancelled.",
    )
    if call.status in TERMINAL_STATUSES:
        raise refused  # cancelling a cancelled call changes nothing, but the protocol refuses
    try:
        await run_sync(cancel_call, call_id=call.id, agent=caller.agent)
    except InvalidTransition:
        raise refused from None
    call = await _call(caller, params.task_id)
    return _wire(types.CancelTaskResult(**task_of(call).model_dump()))


HANDLERS: list[tuple[str, type[Any], Any]] = [
    ("tasks/get", types.GetTaskRequestParams, get_task),
    ("tasks/result", types.GetTaskPayloadRequestParams, task_result),
    ("tasks/list", types.PaginatedRequestParams, list_tasks),
    ("tasks/cancel", types.CancelTaskRequestParams, cancel_task),
]
