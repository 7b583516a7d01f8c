"""/mcp where its neighbours misbehave: Redis failing while requests wait, a client whose
name PostgreSQL cannot store, a legacy client that cancels a request that waits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import mcp_types as types
import pytest
from django.conf import settings
from django.test import override_settings
from mcp.shared.exceptions import MCPError

from approvals.models import ToolCall
from gateway import coordination
from gateway.mcp import waiting
from tests.conftest import World
from tests.gateway.mcp.conftest import connected
from tests.gateway.mcp.test_endpoint import ACCEPT, INITIALIZE, message, post
from tests.gateway.mcp.test_waits import subscribers
from tests.support.calls import pending_call
from tests.support.link import TcpLink
from tests.support.web import WebProcess, running_web

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}
MODERN = "2026-07-28"


@pytest.fixture
def web_behind_a_redis_link(
    django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WebProcess, TcpLink]]:
    redis_url = urlsplit(settings.REDIS_URL)
    link = TcpLink((redis_url.hostname or "127.0.0.1", redis_url.port or 6379))
    url = f"redis://127.0.0.1:{link.port}{redis_url.path}"
    with (
        django_db_blocker.unblock(),
        running_web(tmp_path=tmp_path_factory.mktemp("mcp-redis"), env={"REDIS_URL": url}) as web,
    ):
        yield web, link
    link.cut()


def test_a_wait_while_redis_is_down_answers_the_call_or_unavailable_not_redis_error(
    live_world: World, web_behind_a_redis_link: tuple[WebProcess, TcpLink]
) -> None:
    """While Redis fails, an MCP wait answered JSON-RPC error 0 with redis-py's message (the
    Redis server's address). It answers the call as it stands, or ``unavailable`` where it
    must wait (as a REST long-poll is refused: neither waits uncounted)."""
    web, link = web_behind_a_redis_link
    call = pending_call(live_world)
    link.cut()

    async def main() -> tuple[types.CallToolResult, MCPError]:
        async with connected(web.url, live_world.token) as client:
            waited = await client.call_tool(
                "countersign_wait", {"call_id": str(call.pk), "wait_seconds": 1}
            )
            with pytest.raises(MCPError) as refused:
                await client.session._dispatcher.send_raw_request(
                    "tasks/result", {"taskId": str(call.pk)}, {}
                )
            return waited, refused.value

    waited, refused = anyio.run(main)
    assert waited.is_error is False, waited
    assert waited.structured_content["status"] == "pending"  # type: ignore[index]
    assert refused.error.code != 0, refused.error
    assert str(link.port) not in refused.error.message
    assert refused.error.data["error"]["code"] == "unavailable"  # type: ignore[index]
    assert refused.error.data["error"]["retryable"] is True  # type: ignore[index]


def test_a_client_name_postgresql_cannot_store_is_no_internal_error(
    live_world: World, mcp_web: WebProcess
) -> None:
    """clientInfo is stored with the session and every call; a NUL in it failed the
    INSERT: initialize answered error 0 with PostgreSQL's message, every modern call
    -32603."""
    named = {**INITIALIZE["params"], "clientInfo": {"name": "bot\u0000", "version": "1"}}  # type: ignore[dict-item]
    opened = post(mcp_web, live_world.token, {**INITIALIZE, "params": named})
    assert "result" in message(opened), message(opened)

    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bot\u0000", "version": "\ud800"},
    }
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "search_docs", "arguments": {"query": "refund"}, "_meta": meta}}  # fmt: skip
    answered = httpx.post(f"{mcp_web.url}/mcp", content=json.dumps(body).encode(), timeout=30,
        headers={**ACCEPT, "Authorization": f"Bearer {live_world.token}",
                 "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call",
                 "Mcp-Name": "search_docs"})  # fmt: skip
    answer = message(answered)
    assert "result" in answer, answer
    assert answer["result"]["isError"] is False
    assert ToolCall.objects.get().client == "bot\ufffd/\ufffd"


def test_a_legacy_client_that_cancels_a_wait_frees_its_place(
    live_world: World, mcp_web: WebProcess
) -> None:
    """A cancelled tasks/result (the official client sends notifications/cancelled on a POST
    of its own, and keeps the connection) still waited, holding one of the agent's
    MCP_MAX_WAITS_PER_AGENT places and a Redis connection until the call ended."""
    call = pending_call(live_world)
    seen: list[int] = []

    async def count() -> int:
        return await anyio.to_thread.run_sync(subscribers, str(call.pk))

    async def main() -> None:
        async with connected(mcp_web.url, live_world.token) as client:
            async with anyio.create_task_group() as group:

                async def wait() -> None:
                    await client.session._dispatcher.send_raw_request(
                        "tasks/result", {"taskId": str(call.pk)}, {}
                    )

                group.start_soon(wait)
                # Cancelled once it waits (not before: a cancel read first is another test).
                deadline = anyio.current_time() + 20
                while await count() == 0 and anyio.current_time() < deadline:
                    await anyio.sleep(0.1)
                seen.append(await count())
                group.cancel_scope.cancel()
            # The wait ends within moments of the cancel; before the fix it never did.
            deadline = anyio.current_time() + 8
            while await count() and anyio.current_time() < deadline:
                await anyio.sleep(0.1)
            seen.append(await count())

    anyio.run(main)
    assert seen[0] == 1, "the request waited before it was cancelled"
    assert seen[1] == 0, "the cancelled request still waits"


def test_a_cancel_read_before_its_request_waits_still_ends_the_wait(
    live_world: World, mcp_web: WebProcess
) -> None:
    """The cancel and its request travel on two connections: the official client's cancel,
    a few milliseconds after its tasks/result, reached the server first, was published to
    no one, and the tasks/result then waited until the call ended, holding a place."""
    call = pending_call(live_world)
    version = {"MCP-Protocol-Version": "2025-11-25"}
    opened = post(mcp_web, live_world.token, {**INITIALIZE, "params": {
        **INITIALIZE["params"], "protocolVersion": "2025-11-25"}})  # type: ignore[dict-item]  # fmt: skip
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], **version}
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
    assert post(mcp_web, live_world.token, cancel, **session).status_code == 202

    wait = {"jsonrpc": "2.0", "id": 7, "method": "tasks/result", "params": {"taskId": str(call.pk)}}
    try:
        answered = httpx.post(f"{mcp_web.url}/mcp", content=json.dumps(wait).encode(), timeout=8,
            headers={**ACCEPT, "Authorization": f"Bearer {live_world.token}", **session})  # fmt: skip
    except httpx.ReadTimeout:
        pytest.fail("the request its client cancelled still waits")
    assert message(answered)["error"]["message"] == "The request was cancelled.", answered.text
    assert subscribers(str(call.pk)) == 0


def test_a_cancel_of_a_huge_request_id_keeps_little_in_redis_and_still_ends_its_wait(
    live_world: World, mcp_web: WebProcess
) -> None:
    """A request id is the client's pick, as long as a body: each cancel kept the whole id
    in a Redis key for CANCEL_SECONDS (200 KB a message, so an agent filled Redis at the
    rate it sent them)."""
    call = pending_call(live_world)
    version = {"MCP-Protocol-Version": "2025-11-25"}
    opened = post(mcp_web, live_world.token, {**INITIALIZE, "params": {
        **INITIALIZE["params"], "protocolVersion": "2025-11-25"}})  # type: ignore[dict-item]  # fmt: skip
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], **version}
    huge_id = "x" * 200_000
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": huge_id}}  # fmt: skip
    for _ in range(3):
        assert post(mcp_web, live_world.token, cancel, **session).status_code == 202
    redis_client = coordination.redis_client()
    kept = list(redis_client.scan_iter(coordination.key("mcp-request", live_world.agent.pk, "*")))
    assert kept, "the cancel is kept for its request"
    assert sum(len(key) for key in kept) < 1_000, [key[:80] for key in kept]

    wait = {"jsonrpc": "2.0", "id": huge_id, "method": "tasks/result", "params": {"taskId": str(call.pk)}}  # fmt: skip
    try:
        answered = httpx.post(f"{mcp_web.url}/mcp", content=json.dumps(wait).encode(), timeout=8,
            headers={**ACCEPT, "Authorization": f"Bearer {live_world.token}", **session})  # fmt: skip
    except httpx.ReadTimeout:
        pytest.fail("the request its client cancelled still waits")
    assert message(answered)["error"]["message"] == "The request was cancelled."


def test_a_cancel_before_its_request_waits_ends_the_wait_in_the_embedded_mode(
    live_world: World,
) -> None:
    call = pending_call(live_world)
    request = waiting.request_key(live_world.agent.pk, "mcp-session", 7)
    assert request is not None

    async def main() -> None:
        await waiting.cancel(request)
        with anyio.fail_after(5):
            await waiting.until_settled(
                agent=live_world.agent, call_id=call.pk, timeout=30, request=request
            )

    with override_settings(REDIS_URL=""), pytest.raises(waiting.Cancelled):
        anyio.run(main)


def test_a_call_past_its_approval_is_not_said_to_wait_for_one(world: World) -> None:
    """A waited call that ran and whose outcome is being checked was answered "The call ...
    is ran, but ... It runs only once a person approves it", and a model told its user the
    call awaited approval."""
    from gateway.mcp import calls as mcp_calls
    from gateway.mcp import state as mcp_state
    from tests.support.calls import unknown_call

    call = unknown_call(world)
    read = mcp_state.read(world.agent, call.pk)
    assert read is not None
    advice = mcp_calls.pending_result(read).content[0].text  # type: ignore[union-attr]
    assert f"The call {call.pk} stands: ran, but whether it took effect" in advice
    assert "approves" not in advice and "decision" not in advice
    waiting = mcp_state.read(world.agent, pending_call(world).pk)
    assert waiting is not None
    text = mcp_calls.pending_result(waiting).content[0].text  # type: ignore[union-attr]
    assert "is waiting for approval" in text and "It runs only once a person approves it" in text
