"""The official MCP Python SDK client against a real Countersign process: initialize, the
tool list with its annotations, reads, writes that wait for a person (with and without
MCP tasks), rejections, refusals, idempotency, and exactly one effect per approved call.

Both protocol eras the SDK speaks are exercised: ``legacy`` (the initialize handshake,
revision 2025-11-25) and ``auto`` (revision 2026-07-28, per-request envelope).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from django.db import connections
from mcp.shared.exceptions import MCPError

from approvals.execution import send
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from audit.models import AuditEvent
from gateway.mcp import calls
from gateway.models import IdempotencyRecord
from tests.conftest import World, sandbox_effects
from tests.gateway.mcp.conftest import CALL_WAIT_SECONDS, connected
from tests.support.web import WebProcess
from tests.support.workers import Worker, wait_for
from tools_registry import services as registry_services
from tools_registry.models import Agent, Tool

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}
MODES = ["legacy", "auto"]


def run[T](main: Any) -> T:
    return anyio.run(main)  # type: ignore[no-any-return]


def emails_sent() -> list[dict[str, Any]]:
    return [e for e in sandbox_effects() if e["tool"] == "send_email"]


def the_pending_call(tool: str = "send_email") -> ToolCall:
    wait_for(
        lambda: ToolCall.objects.filter(tool__name=tool, status=Status.PENDING).exists(),
        message=f"a pending {tool} call",
    )
    return ToolCall.objects.get(tool__name=tool, status=Status.PENDING)


def call_in_background(
    world: World, web: WebProcess, tool: str, arguments: dict[str, Any], *, mode: str = "legacy"
) -> tuple[threading.Thread, dict[str, Any]]:
    """The official client calls ``tool`` in a thread of its own, waiting for the call to
    end (as a model's client does); its result lands in the dict under "result"."""
    answer: dict[str, Any] = {}

    async def main() -> None:
        async with connected(web.url, world.token, mode=mode) as client:
            answer["result"] = await client.call_tool(tool, arguments)

    waiting = threading.Thread(target=anyio.run, args=(main,))
    waiting.start()
    return waiting, answer


@pytest.mark.parametrize("mode", MODES)
def test_initialize_names_countersign_and_explains_approvals(
    live_world: World, mcp_web: WebProcess, mode: str
) -> None:
    async def main() -> tuple[Any, ...]:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            return client.server_info, client.instructions, client.protocol_version

    info, instructions, version = run(main)
    assert info.name == "countersign" and info.version
    assert "approve" in instructions and "do not retry a rejected call" in instructions
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")


def test_the_task_capability_is_announced_on_the_revision_that_has_tasks(
    live_world: World, mcp_web: WebProcess
) -> None:
    async def main() -> Any:
        async with connected(mcp_web.url, live_world.token) as client:
            return client.session.initialize_result

    result = run(main)
    raw = result.model_dump(by_alias=True, exclude_none=True)
    assert raw["capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}


@pytest.mark.parametrize("mode", MODES)
def test_tools_list_shows_the_agents_tools_with_mcp_annotations(
    live_world: World, mcp_web: WebProcess, mode: str
) -> None:
    live_world.agent.allowed_tools.remove(live_world.tools["delete_customer"])

    async def main() -> list[types.Tool]:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in run(main)}
    assert set(tools) == {
        "search_docs",
        "get_customer",
        "send_email",
        "update_customer",
        "issue_refund",
        "countersign_wait",
    }
    hints = {
        name: (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
        for name, t in tools.items()
        if (a := t.annotations) is not None
    }
    assert hints["search_docs"] == (True, False, True, False)
    assert hints["send_email"] == (False, False, False, True), "an e-mail only adds"
    assert hints["update_customer"] == (False, True, True, False), "it overwrites fields"
    assert hints["issue_refund"] == (False, False, False, True)
    assert hints["countersign_wait"][0] is True
    assert tools["search_docs"].output_schema is not None
    assert tools["send_email"].output_schema is None
    assert tools["send_email"].input_schema == live_world.tools["send_email"].input_schema
    assert tools["get_customer"].title == "Get customer"


@pytest.mark.parametrize("mode", MODES)
def test_a_read_runs_at_once_and_a_failure_carries_the_rest_apis_error(
    live_world: World, mcp_web: WebProcess, mode: str
) -> None:
    async def main() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            found = await client.call_tool("get_customer", {"customer_id": "cus_0002"})
            missing = await client.call_tool("get_customer", {"customer_id": "cus_9999"})
            return found, missing

    found, missing = run(main)
    assert found.is_error is False
    assert found.structured_content is not None
    assert found.structured_content["name"] == "Grace Hopper"
    assert "Grace Hopper" in found.content[0].text  # type: ignore[union-attr]
    assert missing.is_error is True
    error = missing.structured_content["error"]  # type: ignore[index]
    assert set(error) >= {"code", "message", "suggestion", "retryable"}
    assert "No customer cus_9999" in error["message"]
    # The tool refused (ToolFailed, not retryable): asking again would answer the same.
    assert error["code"] == "tool_failed" and error["retryable"] is False
    assert error["details"] == {"tool_code": "customer_not_found"}
    rest = httpx.post(
        f"{mcp_web.url}/api/v1/tool-calls",
        json={"tool": "get_customer", "arguments": {"customer_id": "cus_9999"}, "session_id": "s"},
        headers={"Authorization": f"Bearer {live_world.token}", "Idempotency-Key": f"r-{mode}"},
    )
    assert rest.status_code == 422
    assert rest.json()["error"] == error, "the REST API's error, word for word"


@pytest.mark.parametrize("mode", MODES)
def test_a_write_that_failed_after_approval_carries_the_tools_code(
    live_world: World, mcp_web: WebProcess, mcp_worker: Worker, mode: str
) -> None:
    arguments = {"customer_id": "cus_9999", "changes": {"plan": "pro"}}
    waiting, answer = call_in_background(
        live_world, mcp_web, "update_customer", arguments, mode=mode
    )
    call = the_pending_call("update_customer")
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve")
    waiting.join(timeout=CALL_WAIT_SECONDS + 30)

    result: types.CallToolResult = answer["result"]
    assert result.is_error is True, result
    error = result.structured_content["error"]  # type: ignore[index]
    assert error["code"] == "tool_failed" and error["retryable"] is False
    assert error["details"] == {"tool_code": "customer_not_found"}
    assert "No customer cus_9999" in error["message"]
    assert result.structured_content["call"]["status"] == "failed"  # type: ignore[index]
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED


def test_a_write_refused_at_its_claim_says_why_not_that_the_tool_refused(
    live_world: World, mcp_web: WebProcess, mcp_worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool's definition changed between the approval and the run: the tool never ran,
    and the model is told to fetch the tools again, as a read refused there is."""
    waiting, answer = call_in_background(live_world, mcp_web, "send_email", EMAIL)
    call = the_pending_call()
    held: list[uuid.UUID] = []
    monkeypatch.setattr(send, "send_execution", held.append)  # approved, not yet sent
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve")
    Tool.objects.filter(pk=call.tool_id).update(version="changed")
    monkeypatch.undo()
    send.send_execution(*held)
    waiting.join(timeout=CALL_WAIT_SECONDS + 30)

    result: types.CallToolResult = answer["result"]
    assert result.is_error is True, result
    error = result.structured_content["error"]  # type: ignore[index]
    assert error["code"] == "tool_version_changed", error
    assert "tools/list" in error["suggestion"]
    assert result.structured_content["call"]["status"] == "failed"  # type: ignore[index]
    assert emails_sent() == []


def test_a_read_asked_for_as_a_task_is_refused_without_running(
    live_world: World, mcp_web: WebProcess
) -> None:
    async def main() -> str:
        async with connected(mcp_web.url, live_world.token) as client:
            params = {
                "name": "get_customer",
                "arguments": {"customer_id": "cus_0001"},
                "task": {"ttl": 60_000},
            }
            with pytest.raises(Exception) as refused:
                await client.session._dispatcher.send_raw_request("tools/call", params, {})
            return str(refused.value)

    assert "get_customer is a read" in run(main)
    assert not ToolCall.objects.exists(), "nothing ran, nothing was counted"


@pytest.mark.parametrize("mode", MODES)
def test_an_optional_argument_sent_as_null_is_not_given(
    live_world: World, mcp_web: WebProcess, mode: str
) -> None:
    """What a strict client (OpenAI's strict mode) sends for the fields it leaves out."""
    patch = {"name": None, "email": None, "phone": None, "plan": "pro"}

    async def main() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            read = await client.call_tool("search_docs", {"query": "refund", "limit": None})
            write = await client.call_tool(
                "update_customer",
                {"customer_id": "cus_0002", "changes": patch},
                meta={"io.countersign/wait-seconds": 0},  # type: ignore[arg-type]
            )
            return read, write

    read, write = run(main)
    assert read.is_error is False, read
    assert write.is_error is False, write
    assert write.structured_content["status"] == "pending"  # type: ignore[index]
    stored = dict(ToolCall.objects.values_list("tool__name", "arguments"))
    assert stored == {
        "search_docs": {"query": "refund"},
        "update_customer": {"customer_id": "cus_0002", "changes": {"plan": "pro"}},
    }, "the call is the patch the model meant, not an overwrite with nulls"


@pytest.mark.parametrize("mode", MODES)
def test_refusals_are_tool_results_the_model_can_read(
    live_world: World, mcp_web: WebProcess, mode: str
) -> None:
    live_world.agent.allowed_tools.remove(live_world.tools["delete_customer"])

    async def main() -> dict[str, types.CallToolResult]:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            return {
                "unknown": await client.call_tool("launch_rocket", {}),
                "not_allowed": await client.call_tool(
                    "delete_customer", {"customer_id": "cus_0001", "reason": "asked"}
                ),
                "invalid": await client.call_tool("send_email", {"to": "nobody"}),
            }

    results = run(main)
    codes = {name: r.structured_content["error"]["code"] for name, r in results.items()}  # type: ignore[index]
    assert codes == {
        "unknown": "unknown_tool",
        "not_allowed": "tool_not_allowed",
        "invalid": "invalid_arguments",
    }
    assert all(r.is_error for r in results.values())
    paths = {d["path"] for d in results["invalid"].structured_content["error"]["details"]}  # type: ignore[index]
    assert {"$.to", "$"} & paths
    assert not ToolCall.objects.exists()
    refused = AuditEvent.objects.filter(action="call.refused").values_list("outcome", flat=True)
    assert sorted(refused) == sorted(codes.values())


def test_an_invalid_arguments_result_lists_at_most_50_problems_and_counts_them_all(
    live_world: World, mcp_web: WebProcess
) -> None:
    """The MCP door shares the REST door's check: 5,000 made-up argument names were 5,000
    problems in the result."""
    arguments = {**EMAIL, **{f"k{i}": 0 for i in range(5_000)}}

    async def main() -> types.CallToolResult:
        async with connected(mcp_web.url, live_world.token) as client:
            return await client.call_tool("send_email", arguments)

    result: types.CallToolResult = run(main)
    assert result.is_error is True
    error = result.structured_content["error"]  # type: ignore[index]
    assert error["code"] == "invalid_arguments"
    assert len(error["details"]) == 50
    assert error["problems_total"] == 5_000
    assert "5,000 problems" in error["message"]
    [event] = AuditEvent.objects.filter(action="call.refused")
    assert len(event.data["details"]) == 50 and event.data["problems_total"] == 5_000


@pytest.mark.parametrize("mode", MODES)
def test_countersign_waits_argument_errors_quote_what_was_sent_cut_short(
    live_world: World, mcp_web: WebProcess, mode: str
) -> None:
    """countersign_wait named a made-up argument in its path whole (100,000 characters) and
    listed every one of 3,000; its errors are the tools' own, cut and counted the same way."""
    long_name = "a" * 100_000  # listed first of the made-up names
    arguments = {
        "call_id": "c" * 100_000,
        "wait_seconds": "soon",
        long_name: 1,
        **{f"k{i}": 0 for i in range(3_000)},
    }

    async def main() -> types.CallToolResult:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            return await client.call_tool("countersign_wait", arguments)

    result: types.CallToolResult = run(main)
    assert result.is_error is True
    error = result.structured_content["error"]  # type: ignore[index]
    assert error["code"] == "invalid_arguments"
    for detail in error["details"]:
        assert len(detail["path"]) <= 210 and len(detail["message"]) <= 400, detail["path"][:300]
        assert detail["validator"]
    assert len(json.dumps(result.structured_content)) < 10_000
    assert error["problems_total"] == 3_003
    assert len(error["details"]) == 50
    by_path = {d["path"]: d["message"] for d in error["details"]}
    assert "(100,000 characters) is not a 'uuid'" in by_path["$.call_id"]
    assert by_path["$.wait_seconds"] == "'soon' is not of type 'number'"
    assert by_path[f"$.{'a' * 200}"] == (
        f"'{'a' * 199}… (100,000 characters) is not an argument of this tool."
    )
    assert len(result.content[0].text) < 10_000  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
def test_a_write_approved_while_the_client_waits_answers_with_its_result_and_one_effect(
    live_world: World, mcp_web: WebProcess, mcp_worker: Worker, mode: str
) -> None:
    answer: dict[str, Any] = {}
    progress: list[str | None] = []

    async def main() -> None:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:

            async def seen(done: float, total: float | None, message: str | None) -> None:
                progress.append(message)

            answer["result"] = await client.call_tool("send_email", EMAIL, progress_callback=seen)

    waiting = threading.Thread(target=anyio.run, args=(main,))
    waiting.start()
    call = the_pending_call()
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve")
    waiting.join(timeout=CALL_WAIT_SECONDS + 30)

    result: types.CallToolResult = answer["result"]
    assert result.is_error is False, result
    assert result.structured_content is not None
    assert result.structured_content["status"] == "sent"
    assert result.meta is not None and result.meta["io.countersign/call-id"] == str(call.pk)
    assert [(e["idempotency_key"], e["deliveries"]) for e in emails_sent()] == [
        (f"countersign-{call.pk}", 1)
    ]
    submitted = AuditEvent.objects.get(call_id=call.pk, action="call.submitted")
    assert submitted.data["transport"] == "mcp"
    assert submitted.data["client"] == "countersign-tests/9.8.7"


def test_progress_notifications_say_what_the_call_waits_for(
    live_world: World, mcp_web: WebProcess
) -> None:
    progress: list[str | None] = []

    async def main() -> types.CallToolResult:
        async with connected(mcp_web.url, live_world.token) as client:

            async def seen(done: float, total: float | None, message: str | None) -> None:
                progress.append(message)

            return await client.call_tool("send_email", EMAIL, progress_callback=seen)

    result = run(main)
    assert result.structured_content["status"] == "pending"  # type: ignore[index]
    assert progress, "no progress notification while the call waited"
    assert progress[0] is not None and progress[0].startswith(
        "waiting for approval: 0 of 1 reviewers"
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_write_still_pending_answers_with_the_rest_202_body_then_countersign_wait_settles_it(
    live_world: World, mcp_web: WebProcess, mcp_worker: Worker, mode: str
) -> None:
    async def submit() -> types.CallToolResult:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            return await client.call_tool("send_email", EMAIL)

    pending = run(submit)
    body = pending.structured_content
    assert pending.is_error is False
    call = ToolCall.objects.get(pk=body["id"])  # type: ignore[index]
    rest = httpx.get(
        f"{mcp_web.url}/api/v1/tool-calls/{call.pk}",
        headers={"Authorization": f"Bearer {live_world.token}"},
    ).json()
    assert body == rest, "exactly the REST API's answer for the pending call"
    assert set(body) >= {"id", "status", "status_url", "expires_at"}  # type: ignore[arg-type]
    text = pending.content[0].text  # type: ignore[union-attr]
    assert "countersign_wait" in text and str(call.pk) in text

    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve")

    async def wait() -> types.CallToolResult:
        async with connected(mcp_web.url, live_world.token, mode=mode) as client:
            return await client.call_tool(
                "countersign_wait", {"call_id": str(call.pk), "wait_seconds": 30}
            )

    settled = run(wait)
    assert settled.is_error is False
    assert settled.structured_content["status"] == "sent"  # type: ignore[index]
    assert len(emails_sent()) == 1


def test_a_rejection_reaches_the_model_with_the_reviewers_reason(
    live_world: World, mcp_web: WebProcess
) -> None:
    waiting, answer = call_in_background(live_world, mcp_web, "send_email", EMAIL)
    call = the_pending_call()
    decide(
        call_id=call.pk,
        reviewer=live_world.bob,
        verdict="reject",
        comment="We never e-mail customers about refunds before they are booked.",
    )
    waiting.join(timeout=CALL_WAIT_SECONDS + 30)
    result: types.CallToolResult = answer["result"]
    assert result.is_error is True
    error = result.structured_content["error"]  # type: ignore[index]
    assert error["code"] == "call_rejected" and error["retryable"] is False
    assert "before they are booked" in error["message"]
    assert emails_sent() == []


def test_a_call_a_reviewer_corrected_tells_the_model_what_ran(
    live_world: World, mcp_web: WebProcess, mcp_worker: Worker
) -> None:
    """As the REST answer does (``arguments_edited``, the ``arguments`` that ran): the MCP
    answer was the result alone, and the model told its user the e-mail it asked for went
    out when a corrected one had."""
    corrected = {**EMAIL, "subject": "Your refund is booked"}
    waiting, answer = call_in_background(live_world, mcp_web, "send_email", EMAIL)
    call = the_pending_call()
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve", edited_arguments=corrected)
    waiting.join(timeout=CALL_WAIT_SECONDS + 30)

    result: types.CallToolResult = answer["result"]
    assert result.is_error is False, result
    assert len(emails_sent()) == 1
    assert ToolCall.objects.get(pk=call.pk).arguments == corrected
    assert result.meta is not None
    assert result.meta["io.countersign/arguments-edited"] is True
    assert result.meta["io.countersign/arguments"] == corrected
    said = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
    assert "corrected" in said and "Your refund is booked" in said, said


def test_a_task_is_the_call_polled_cancelled_and_settled_over_tasks_methods(
    live_world: World, mcp_web: WebProcess, mcp_worker: Worker
) -> None:
    """Revision 2025-11-25's tasks, through the SDK's session and its task types."""

    async def create(client: Any, arguments: dict[str, Any]) -> types.CreateTaskResult:
        params = {"name": "send_email", "arguments": arguments, "task": {"ttl": 60_000}}
        raw = await client.session._dispatcher.send_raw_request("tools/call", params, {})
        return types.CreateTaskResult.model_validate(raw, by_name=False)

    async def get(client: Any, task_id: str) -> types.GetTaskResult:
        request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
        return await client.session.send_request(request, types.GetTaskResult)  # type: ignore[no-any-return]

    async def submit() -> tuple[str, str, types.GetTaskResult, list[str], types.CancelTaskResult]:
        async with connected(mcp_web.url, live_world.token) as client:
            kept = await create(client, EMAIL)
            dropped = await create(client, {**EMAIL, "subject": "Never mind"})
            state = await get(client, kept.task.task_id)
            listed = await client.session.send_request(
                types.ListTasksRequest(), types.ListTasksResult
            )
            cancel = types.CancelTaskRequest(
                params=types.CancelTaskRequestParams(task_id=dropped.task.task_id)
            )
            cancelled = await client.session.send_request(cancel, types.CancelTaskResult)
            return (
                kept.task.task_id,
                dropped.task.task_id,
                state,
                [t.task_id for t in listed.tasks],
                cancelled,
            )

    kept, dropped, state, listed, cancelled = run(submit)

    async def cancel_again() -> str:
        async with connected(mcp_web.url, live_world.token) as client:
            request = types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=dropped))
            with pytest.raises(MCPError) as refused:
                await client.session.send_request(request, types.CancelTaskResult)
            assert refused.value.code == -32602  # a task in a terminal status
            return str(refused.value)

    assert "only a call waiting for approval can be cancelled" in run(cancel_again)
    assert state.status == "working"
    assert state.status_message is not None
    assert state.status_message.startswith("waiting for approval: 0 of 1 reviewers; expires")
    assert set(listed) == {kept, dropped}
    assert cancelled.status == "cancelled"
    assert ToolCall.objects.get(pk=dropped).status == Status.CANCELLED

    decide(call_id=uuid.UUID(kept), reviewer=live_world.bob, verdict="approve")

    async def settle() -> tuple[types.GetTaskResult, types.CallToolResult, Any]:
        # A new connection: the task outlives the client's session.
        async with connected(mcp_web.url, live_world.token) as client:
            raw = await client.session._dispatcher.send_raw_request(
                "tasks/result", {"taskId": kept}, {}
            )
            final = await get(client, kept)
            with pytest.raises(Exception) as again:
                await client.session.send_request(
                    types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=kept)),
                    types.CancelTaskResult,
                )
            return final, types.CallToolResult.model_validate(raw, by_name=False), again.value

    final, result, refused = run(settle)
    assert final.status == "completed"
    assert result.is_error is False and result.structured_content["status"] == "sent"  # type: ignore[index]
    assert "only a call waiting for approval can be cancelled" in str(refused)
    assert [e["idempotency_key"] for e in emails_sent()] == [f"countersign-{kept}"]


def test_another_agents_task_is_not_found(live_world: World, mcp_web: WebProcess) -> None:
    other = Agent.objects.create(name="other-bot", owner=live_world.alice)
    other.allowed_tools.add(live_world.tools["send_email"])
    _, other_token = registry_services.issue_token(agent=other, label="tests")

    async def main() -> str:
        async with connected(mcp_web.url, other_token) as client:
            raw = await client.session._dispatcher.send_raw_request(
                "tools/call", {"name": "send_email", "arguments": EMAIL, "task": {}}, {}
            )
            task_id = types.CreateTaskResult.model_validate(raw, by_name=False).task.task_id
        async with connected(mcp_web.url, live_world.token) as client:
            request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
            with pytest.raises(Exception) as refused:
                await client.session.send_request(request, types.GetTaskResult)
            return str(refused.value)

    assert "No task" in run(main)


def test_the_same_idempotency_key_is_the_same_call_and_other_arguments_are_refused(
    live_world: World, mcp_web: WebProcess
) -> None:
    meta = {"io.countersign/idempotency-key": "mcp-key-1", "io.countersign/wait-seconds": 0}

    async def main() -> list[types.CallToolResult]:
        async with connected(mcp_web.url, live_world.token) as client:
            first = await client.call_tool("send_email", EMAIL, meta=meta)  # type: ignore[arg-type]
            again = await client.call_tool("send_email", EMAIL, meta=meta)  # type: ignore[arg-type]
            other = await client.call_tool(
                "send_email",
                {**EMAIL, "subject": "Something else"},
                meta=meta,  # type: ignore[arg-type]
            )
            return [first, again, other]

    first, again, other = run(main)
    assert first.structured_content["id"] == again.structured_content["id"]  # type: ignore[index]
    assert other.is_error is True
    assert other.structured_content["error"]["code"] == "idempotency_key_reused"  # type: ignore[index]
    assert ToolCall.objects.count() == 1


def test_a_key_error_names_the_meta_entry_not_a_header_no_mcp_client_can_send(
    live_world: World, mcp_web: WebProcess
) -> None:
    """REST's advice is to send the Idempotency-Key header; a model reading it over MCP had
    no header to send, and its client no way to."""
    key = "io.countersign/idempotency-key"

    async def main() -> list[types.CallToolResult]:
        async with connected(mcp_web.url, live_world.token) as client:
            meta: dict[str, object] = {key: "mcp-key-2", "io.countersign/wait-seconds": 0}
            await client.call_tool("send_email", EMAIL, meta=meta)  # type: ignore[arg-type]
            reused = await client.call_tool(
                "send_email",
                {**EMAIL, "subject": "Something else"},
                meta=meta,  # type: ignore[arg-type]
            )
            invalid = await client.call_tool(
                "send_email",
                EMAIL,
                meta={key: " padded ", "io.countersign/wait-seconds": 0},  # type: ignore[arg-type]
            )
            return [reused, invalid]

    codes = ["idempotency_key_reused", "idempotency_key_required"]
    for result, code in zip(run(main), codes, strict=True):
        error = result.structured_content["error"]  # type: ignore[index]
        assert result.is_error is True and error["code"] == code, error
        said = error["message"] + " " + error["suggestion"]
        assert f'_meta entry "{key}"' in said, said
        assert "Idempotency-Key" not in said and "header" not in said, said


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_key_sent_again_from_a_new_connection_is_the_same_call(
    live_world: World, mcp_web: WebProcess, mode: str
) -> None:
    """The resend a key is for: the client lost the answer, connects again (a new MCP
    session, or none at all), and sends the same call with the same key."""
    write = {"io.countersign/idempotency-key": f"resend-{mode}", "io.countersign/wait-seconds": 0}
    read = {"io.countersign/idempotency-key": f"resend-read-{mode}"}
    customer = {"customer_id": "cus_0001"}

    async def main() -> list[types.CallToolResult]:
        answers = []
        for _ in range(2):
            async with connected(mcp_web.url, live_world.token, mode=mode) as client:
                answers.append(await client.call_tool("send_email", EMAIL, meta=write))  # type: ignore[arg-type]
                answers.append(await client.call_tool("get_customer", customer, meta=read))  # type: ignore[arg-type]
        return answers

    first, first_read, again, again_read = run(main)
    assert not again.is_error and not again_read.is_error, (again, again_read)
    assert first.structured_content["id"] == again.structured_content["id"]  # type: ignore[index]
    assert first_read.structured_content == again_read.structured_content
    assert ToolCall.objects.filter(tool__name="send_email").count() == 1
    assert ToolCall.objects.filter(tool__name="get_customer").count() == 1


@pytest.mark.parametrize("round_", range(3))
def test_twenty_concurrent_calls_with_one_key_make_one_call(
    live_world: World, mcp_web: WebProcess, round_: int
) -> None:
    meta = {
        "io.countersign/idempotency-key": f"burst-{round_}",
        "io.countersign/session-id": "burst",
        "io.countersign/wait-seconds": 0,
    }

    async def one(results: list[Any]) -> None:
        async with connected(mcp_web.url, live_world.token) as client:
            results.append(await client.call_tool("send_email", EMAIL, meta=meta))  # type: ignore[arg-type]

    async def main() -> list[Any]:
        results: list[Any] = []
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one, results)
        return results

    results = run(main)
    ids = {r.structured_content["id"] for r in results}  # type: ignore[index]
    assert len(results) == 20 and len(ids) == 1
    assert ToolCall.objects.count() == 1


def test_a_call_sent_again_after_its_key_record_was_swept_is_still_that_call(
    live_world: World, mcp_web: WebProcess
) -> None:
    """A call may wait for approval longer than a key's record is kept (the sweep deletes it
    after IDEMPOTENCY_KEY_TTL); sent again without a key while it is open, it is that call,
    not an error telling the model to read a call by an id it does not have."""
    no_wait = {"io.countersign/session-id": "long-wait", "io.countersign/wait-seconds": 0}

    async def send() -> types.CallToolResult:
        async with connected(mcp_web.url, live_world.token) as client:
            return await client.call_tool("send_email", EMAIL, meta=no_wait)  # type: ignore[arg-type]

    first = run(send)
    IdempotencyRecord.objects.all().delete()  # what the sweep does to an old record
    again = run(send)
    assert not again.is_error, again.structured_content
    assert again.structured_content["id"] == first.structured_content["id"]  # type: ignore[index]
    assert again.structured_content["status"] == "pending"  # type: ignore[index]
    assert ToolCall.objects.count() == 1


def test_a_call_sent_again_without_a_key_is_the_same_pending_call(
    live_world: World, mcp_web: WebProcess
) -> None:
    """A client that lost the answer (a dropped connection) and sends the call again in
    its session gets the call it made, not a second one to approve."""

    no_wait = {"io.countersign/wait-seconds": 0}

    async def main() -> list[types.CallToolResult]:
        async with connected(mcp_web.url, live_world.token) as client:
            first = await client.call_tool("send_email", EMAIL, meta=no_wait)  # type: ignore[arg-type]
            again = await client.call_tool("send_email", EMAIL, meta=no_wait)  # type: ignore[arg-type]
            different = await client.call_tool(
                "send_email",
                {**EMAIL, "body": "Other."},
                meta=no_wait,  # type: ignore[arg-type]
            )
            return [first, again, different]

    first, again, different = run(main)
    ids = [r.structured_content["id"] for r in (first, again, different)]  # type: ignore[index]
    assert ids[0] == ids[1] != ids[2]
    assert ToolCall.objects.count() == 2


def test_a_call_sent_again_from_a_new_mcp_session_without_a_key_is_the_same_call(
    live_world: World, mcp_web: WebProcess
) -> None:
    """langchain-mcp-adapters (the LangGraph setup docs/mcp.md shows) opens an MCP session
    for each tool call, initialize to DELETE: a write sent again (the answer lost, or the
    model calling the tool again instead of countersign_wait) came in a new session, and
    each was a new call to approve, and to run twice once both were approved."""
    no_wait = {"io.countersign/wait-seconds": 0}

    async def main() -> list[types.CallToolResult]:
        answers = []
        for _ in range(2):
            async with connected(mcp_web.url, live_world.token) as client:
                answers.append(await client.call_tool("send_email", EMAIL, meta=no_wait))  # type: ignore[arg-type]
        return answers

    first, again = run(main)
    assert not again.is_error, again.structured_content
    assert again.structured_content["id"] == first.structured_content["id"]  # type: ignore[index]
    assert ToolCall.objects.count() == 1


def test_the_same_call_asked_for_again_after_each_ended_is_a_new_call_each_time(
    live_world: World, mcp_web: WebProcess
) -> None:
    """The derived key counts the times the same call was asked for again in the session
    after the last one ended (here: cancelled); past the first few, the latest is still
    found."""

    no_wait = {"io.countersign/wait-seconds": 0}
    # Past the keys one statement asks for: the latest is found in the next ones.
    asked = calls.DERIVED_KEYS_FIRST + 2

    def end(call_id: str, status: str) -> None:
        # In one of anyio's worker threads, which outlive the test: its connection goes
        # back to the pool now.
        try:
            ToolCall.objects.filter(pk=call_id).update(status=status)
        finally:
            connections.close_all()

    async def main() -> tuple[list[str], str]:
        ids: list[str] = []
        async with connected(mcp_web.url, live_world.token) as client:

            async def ask() -> str:
                result = await client.call_tool("send_email", EMAIL, meta=no_wait)  # type: ignore[arg-type]
                return str(result.structured_content["id"])  # type: ignore[index]

            for _ in range(asked):
                ids.append(await ask())
                await anyio.to_thread.run_sync(end, ids[-1], Status.CANCELLED)
            await anyio.to_thread.run_sync(end, ids[-1], Status.PENDING)
            return ids, await ask()

    ids, again = run(main)
    assert len(set(ids)) == asked
    keys = ToolCall.objects.order_by("created_at").values_list("request_key", flat=True)
    assert [key.rsplit(".", 1)[1] for key in keys] == [str(n) for n in range(1, asked + 1)]
    assert again == ids[-1], "the latest, still open, is the same call"


def test_a_result_unlike_its_declared_schema_is_an_error_the_client_can_read(
    live_world: World, mcp_web: WebProcess
) -> None:
    """The official client checks a result against the output schema tools/list gave and
    raises on one that does not fit (an imported tool's result cut past the size limit, an
    upstream that changed): Countersign answers such a result as an error it can read."""
    Tool.objects.filter(name="get_customer").update(
        output_schema={
            "type": "object",
            "properties": {"tier": {"type": "string"}},
            "required": ["tier"],
        }
    )

    async def main() -> types.CallToolResult:
        async with connected(mcp_web.url, live_world.token) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert listed["get_customer"].output_schema["required"] == ["tier"]  # type: ignore[index]
            return await client.call_tool("get_customer", {"customer_id": "cus_0002"})

    result = run(main)
    assert result.is_error is True
    assert result.structured_content is not None
    assert result.structured_content["error"]["code"] == "result_not_as_declared"
    assert result.structured_content["call"]["result"]["name"] == "Grace Hopper"
