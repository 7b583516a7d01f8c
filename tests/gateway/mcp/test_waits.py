"""Requests that wait for a call to end, over MCP: at most MCP_MAX_WAITS_PER_AGENT of one
agent's at once (each holds a Redis connection), and none outlives its token. With the
protocol's other corners an agent could reach: a task asked for a read it may not call,
a wait asked for in seconds no float holds, and the SDK's check of header parameters."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis
from django.conf import settings
from django.db import connections

from approvals.models import ToolCall
from audit.models import AuditEvent
from gateway import coordination, longpoll
from tests.conftest import World
from tests.gateway.mcp.test_endpoint import ACCEPT, message
from tests.support.web import WebProcess, running_web
from tools_registry import services as registry_services
from tools_registry.models import Agent, AgentToken, Tool

TASKS = "2025-11-25"
MODERN = "2026-07-28"
MAX_WAITS = 3
EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}


@pytest.fixture(scope="module")
def web(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebProcess]:
    with (
        django_db_blocker.unblock(),
        running_web(
            tmp_path=tmp_path_factory.mktemp("mcp-waits"),
            env={"MCP_MAX_WAITS_PER_AGENT": str(MAX_WAITS), "MCP_CALL_WAIT_SECONDS": "6"},
        ) as running,
    ):
        yield running


def open_session(web: WebProcess, token: str) -> dict[str, str]:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": TASKS,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    auth = {"Authorization": f"Bearer {token}"}
    opened = httpx.post(f"{web.url}/mcp", json=initialize, headers={**ACCEPT, **auth}, timeout=30)
    assert opened.status_code == 200, opened.text
    return {
        **ACCEPT,
        **auth,
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "MCP-Protocol-Version": TASKS,
    }


def rpc(web: WebProcess, headers: dict[str, str], method: str, params: Any, id_: int = 2) -> Any:
    body = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
    answered = httpx.post(f"{web.url}/mcp", json=body, headers=headers, timeout=60)
    assert answered.status_code == 200, answered.text
    return message(answered)


def subscribers(call_id: str) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        channel = longpoll.channel(call_id)
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    finally:
        client.close()


def new_task(web: WebProcess, headers: dict[str, str], subject: str) -> str:
    arguments = {**EMAIL, "subject": subject}
    created = rpc(
        web, headers, "tools/call", {"name": "send_email", "arguments": arguments, "task": {}}
    )
    return str(created["result"]["task"]["taskId"])


def test_one_agent_holds_at_most_its_waits_at_once(live_world: World, web: WebProcess) -> None:
    headers = open_session(web, live_world.token)
    task_id = new_task(web, headers, "first")
    answers: list[Any] = []

    async def wait_for_all() -> None:
        async with httpx.AsyncClient(timeout=60) as client, anyio.create_task_group() as group:

            async def one(n: int) -> None:
                body = {"jsonrpc": "2.0", "id": 100 + n, "method": "tasks/result",
                        "params": {"taskId": task_id}}  # fmt: skip
                answered = await client.post(f"{web.url}/mcp", json=body, headers=headers)
                answers.append(message(answered))

            for n in range(MAX_WAITS):
                group.start_soon(one, n)
            deadline = time.monotonic() + 20
            while await anyio.to_thread.run_sync(subscribers, task_id) < MAX_WAITS:
                assert time.monotonic() < deadline, "the waits did not all start"
                await anyio.sleep(0.2)
            # Every place is taken: a fourth tasks/result is refused at once, retryable.
            refused = rpc(web, headers, "tasks/result", {"taskId": task_id}, id_=99)
            assert refused["error"]["data"]["error"]["code"] == "too_many_waits"
            assert refused["error"]["data"]["error"]["retryable"] is True
            # A tools/call that would wait answers at once with the call as it stands.
            started = time.monotonic()
            pending = rpc(
                web, headers, "tools/call",
                {"name": "send_email", "arguments": {**EMAIL, "subject": "second"}}, id_=98,
            )  # fmt: skip
            assert time.monotonic() - started < 4
            assert pending["result"]["structuredContent"]["status"] == "pending"
            await anyio.to_thread.run_sync(cancel_the_call, live_world, task_id)

    anyio.run(wait_for_all)
    assert len(answers) == MAX_WAITS
    assert all(a["result"]["isError"] is True for a in answers), answers
    # Their places are free again.
    again = new_task(web, headers, "third")
    assert rpc(web, headers, "tasks/cancel", {"taskId": again})["result"]["status"] == "cancelled"


def cancel_the_call(world: World, task_id: str) -> None:
    """Run in one of anyio's worker threads, which outlive the test: its database connection
    goes back to the pool (a later test counts the pool's borrowed connections)."""
    from approvals.services.calls import cancel_call

    try:
        cancel_call(call_id=task_id, agent=world.agent)
    finally:
        connections.close_all()


def test_a_wait_ends_once_its_token_is_revoked(live_world: World, web: WebProcess) -> None:
    """The token is checked as the request arrives; a tasks/result may wait until the call's
    approval expires, and must not hand the call's result to a revoked token meanwhile."""
    headers = open_session(web, live_world.token)
    task_id = new_task(web, headers, "revoked")
    answer: dict[str, Any] = {}

    def wait() -> None:
        answer["message"] = rpc(web, headers, "tasks/result", {"taskId": task_id}, id_=9)

    waiting = threading.Thread(target=wait)
    waiting.start()
    deadline = time.monotonic() + 20
    while subscribers(task_id) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for token in AgentToken.objects.filter(agent=live_world.agent):
        registry_services.revoke_token(token=token)
    waiting.join(timeout=20)
    assert not waiting.is_alive(), "the wait went on after its token was revoked"
    assert answer["message"]["error"]["data"]["error"]["code"] == "not_authenticated"
    assert ToolCall.objects.get(pk=task_id).status == "pending"


def test_a_task_asked_for_a_read_the_agent_may_not_call_is_refused_as_not_allowed(
    live_world: World, web: WebProcess
) -> None:
    """It said "get_customer is a read", which tells the agent what a tool off its
    allowlist is, and audited nothing."""
    live_world.agent.allowed_tools.remove(live_world.tools["get_customer"])
    headers = open_session(web, live_world.token)
    before = AuditEvent.objects.filter(action="call.refused").count()
    as_task = rpc(web, headers, "tools/call", {
        "name": "get_customer", "arguments": {"customer_id": "cus_0001"}, "task": {}})  # fmt: skip
    assert "is a read" not in json.dumps(as_task)
    assert as_task["error"]["data"]["error"]["code"] == "tool_not_allowed"
    assert AuditEvent.objects.filter(action="call.refused").count() == before + 1
    # A read the agent may call is still no task.
    allowed = rpc(web, headers, "tools/call", {
        "name": "search_docs", "arguments": {"query": "refund"}, "task": {}}, id_=3)  # fmt: skip
    assert "is a read" in allowed["error"]["message"]


def test_a_task_asked_for_a_read_its_end_user_may_not_call_is_refused_as_not_allowed(
    live_world: World, web: WebProcess
) -> None:
    """Only the agent's allowlist was asked: a read its end user may not call, a read
    switched off, or an end user the agent may not name, was refused as "get_customer is a
    read" (call it again without a task), and audited nothing."""
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.ASSERTED
    agent.assertable_roles = ["viewer"]
    agent.role_scopes = {"viewer": {"tools": ["search_docs"]}}
    registry_services.save_agent(agent=agent, changed_by=None)
    headers = open_session(web, live_world.token)
    read = {"name": "get_customer", "arguments": {"customer_id": "cus_0001"}, "task": {}}

    def as_task(on_behalf_of: Any, id_: int) -> Any:
        meta = {"io.countersign/on-behalf-of": on_behalf_of}
        return rpc(web, headers, "tools/call", {**read, "_meta": meta}, id_=id_)

    viewer = as_task({"id": "ada", "roles": ["viewer"]}, 3)
    assert viewer["error"]["data"]["error"]["code"] == "tool_not_allowed_for_user", viewer
    root = as_task({"id": "ada", "roles": ["root"]}, 4)
    assert root["error"]["data"]["error"]["code"] == "role_not_assertable", root
    Tool.objects.filter(name="get_customer").update(enabled=False)
    disabled = as_task("ada", 5)
    assert disabled["error"]["data"]["error"]["code"] == "tool_disabled", disabled
    refused = AuditEvent.objects.filter(action="call.refused").values_list("outcome", flat=True)
    assert sorted(refused) == ["role_not_assertable", "tool_disabled", "tool_not_allowed_for_user"]
    assert not ToolCall.objects.exists()
    # A read the user may call is still no task, and runs only without one.
    allowed = rpc(web, headers, "tools/call", {
        "name": "search_docs", "arguments": {"query": "refund"}, "task": {},
        "_meta": {"io.countersign/on-behalf-of": {"id": "ada", "roles": ["viewer"]}}}, id_=6)  # fmt: skip
    assert "is a read" in allowed["error"]["message"]
    assert not ToolCall.objects.exists()


def test_a_task_list_cursor_with_an_offset_postgresql_refuses_is_read_in_utc(
    live_world: World, web: WebProcess
) -> None:
    """The cursor's time went to PostgreSQL as sent, and an offset Python reads (+23:59)
    PostgreSQL refuses: JSON-RPC error 0 quoting the database's message and the statement."""
    headers = open_session(web, live_world.token)
    task_id = new_task(web, headers, "listed")
    after = "2020-01-01T00:00:00+23:59"
    cursor = base64.urlsafe_b64encode(f"{after}|{uuid.uuid4()}".encode()).decode()
    listed = rpc(web, headers, "tasks/list", {"cursor": cursor}, id_=3)
    assert "error" not in listed, listed
    assert [t["taskId"] for t in listed["result"]["tasks"]] == [task_id]


def test_a_task_asked_for_a_tool_name_postgresql_cannot_hold_is_refused_as_any_call(
    live_world: World, web: WebProcess
) -> None:
    """Whether the tool is a read was asked of PostgreSQL with the name as sent, before the
    request's JSON was checked: JSON-RPC error 0 with the database's message."""
    headers = open_session(web, live_world.token)
    as_task = rpc(web, headers, "tools/call", {
        "name": "send\u0000email", "arguments": EMAIL, "task": {}})  # fmt: skip
    assert as_task["error"]["code"] == -32602, as_task
    assert as_task["error"]["data"]["error"]["code"] == "invalid_request"
    assert not ToolCall.objects.exists()


def test_a_wait_asked_for_in_seconds_no_float_holds_is_the_longest_wait(
    live_world: World, web: WebProcess
) -> None:
    """float(10**400) raised after the call was made: the agent got JSON-RPC error 0 and
    no call id."""
    headers = open_session(web, live_world.token)
    answer = rpc(web, headers, "tools/call", {
        "name": "send_email", "arguments": EMAIL,
        "_meta": {"io.countersign/wait-seconds": 10**400}})  # fmt: skip
    assert answer["result"]["structuredContent"]["status"] == "pending", answer


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"wait_seconds": float("nan")}, "invalid_request"),  # in no schema keyword's range
        ({"wait_seconds": 10**400}, "invalid_arguments"),
        ({"wait_seconds": True}, "invalid_arguments"),
    ],
    ids=["nan", "huge", "bool"],
)
def test_a_wait_for_seconds_outside_its_range_is_refused_at_once(
    live_world: World, web: WebProcess, arguments: dict[str, Any], code: str
) -> None:
    """countersign_wait's arguments are checked by its schema, but NaN (which Python's JSON
    reads) is in the range of no keyword: it would have been a wait without end."""
    headers = open_session(web, live_world.token)
    params = {"name": "countersign_wait", "arguments": {"call_id": str(uuid.uuid4()), **arguments}}
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
    started = time.monotonic()
    answered = httpx.post(
        f"{web.url}/mcp", content=json.dumps(body).encode(), headers=headers, timeout=60
    )
    assert time.monotonic() - started < 5
    answer = message(answered)
    assert answer["result"]["isError"] is True
    assert answer["result"]["structuredContent"]["error"]["code"] == code, answer


def test_a_modern_tools_call_is_not_also_a_tools_list(live_world: World, web: WebProcess) -> None:
    """To check Mcp-Param-* headers the SDK listed the caller's tools before each modern
    tools/call: an end user refused was audited for a tools/list nobody sent."""
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.ASSERTED
    agent.assertable_roles = ["viewer"]
    agent.role_scopes = {"viewer": {"risks": ["read"]}}
    registry_services.save_agent(agent=agent, changed_by=None)
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "search_docs", "arguments": {"query": "refund"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}}}}  # fmt: skip
    answered = httpx.post(f"{web.url}/mcp", json=body, timeout=30, headers={
        **ACCEPT, "Authorization": f"Bearer {live_world.token}", "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call", "Mcp-Name": "search_docs",
        "Countersign-On-Behalf-Of": json.dumps({"id": "ada", "roles": ["root"]})})  # fmt: skip
    refused = message(answered)["result"]["structuredContent"]["error"]
    assert refused["code"] == "role_not_assertable"
    assert not AuditEvent.objects.filter(action="end_user.refused").exists()
    assert (
        AuditEvent.objects.filter(action="call.refused", outcome="role_not_assertable").count() == 1
    )


def test_sessions_that_are_over_and_long_idle_ones_are_deleted(
    live_world: World, web: WebProcess
) -> None:
    """Every initialize, and every call made outside a session (each protocol 2026-07-28
    call), left a row that nothing deleted."""
    from datetime import timedelta

    from django.utils import timezone

    from gateway import retention
    from gateway.models import AgentSession, McpSession

    for _ in range(3):
        headers = open_session(web, live_world.token)
        httpx.delete(f"{web.url}/mcp", headers=headers, timeout=10)
    kept = open_session(web, live_world.token)
    assert rpc(web, kept, "tools/call", {
        "name": "search_docs", "arguments": {"query": "refund"}})["result"]  # fmt: skip
    assert McpSession.objects.count() == 4
    assert AgentSession.objects.count() == 1
    assert retention.sweep() == 3, "the three closed sessions"
    old = timezone.now() - timedelta(days=31)
    McpSession.objects.update(last_seen_at=old)
    AgentSession.objects.update(last_call_at=old)
    assert retention.sweep() == 2
    assert not McpSession.objects.exists() and not AgentSession.objects.exists()


def test_a_session_in_use_is_not_over_when_the_idle_limit_is_under_a_minute(
    live_world: World, django_db_blocker: Any, tmp_path: Any
) -> None:
    """A use was written at most once a minute: with MCP_SESSION_IDLE_SECONDS under a
    minute, a session used every second was over (404) once the limit had passed since
    its first use."""
    with (
        django_db_blocker.unblock(),
        running_web(tmp_path=tmp_path, env={"MCP_SESSION_IDLE_SECONDS": "2"}) as short,
    ):
        headers = open_session(short, live_world.token)
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        # Used for twice the limit, a ping every quarter of it; then unused for more than it.
        for _ in range(8):
            time.sleep(0.5)
            answered = httpx.post(f"{short.url}/mcp", json=ping, headers=headers, timeout=10)
            assert answered.status_code == 200, answered.text
        time.sleep(2.5)
        answered = httpx.post(f"{short.url}/mcp", json=ping, headers=headers, timeout=10)
        assert answered.status_code == 404, "unused for longer than the limit, it is over"


def test_an_agent_keeps_at_most_its_sessions_and_the_least_recently_used_end_first(
    live_world: World, django_db_blocker: Any, tmp_path: Any
) -> None:
    """Every initialize was a row, with no cap: an agent opening sessions in a loop (or a
    client that never closes them) added rows without end until the day-long idle sweep."""
    from datetime import timedelta

    from django.utils import timezone

    from gateway.models import McpSession

    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    with (
        django_db_blocker.unblock(),
        running_web(tmp_path=tmp_path, env={"MCP_MAX_SESSIONS_PER_AGENT": "3"}) as capped,
    ):
        oldest = open_session(capped, live_world.token)
        McpSession.objects.filter(pk=oldest["Mcp-Session-Id"]).update(
            last_seen_at=timezone.now() - timedelta(hours=1)
        )
        for _ in range(20):
            newest = open_session(capped, live_world.token)
        assert McpSession.objects.filter(agent=live_world.agent).count() == 3
        for headers, status in ((oldest, 404), (newest, 200)):
            answered = httpx.post(f"{capped.url}/mcp", json=ping, headers=headers, timeout=10)
            assert answered.status_code == status, answered.text


def test_a_task_id_no_task_has_is_quoted_cut_short(live_world: World, web: WebProcess) -> None:
    """The "No task" error quoted the id whole: a client's 100 KB of it came back in the
    answer, as invalid arguments no longer are (the REST and MCP doors quote them cut short)."""
    headers = open_session(web, live_world.token)
    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        error = rpc(web, headers, method, {"taskId": "x" * 100_000})["error"]
        assert error["code"] == -32602
        assert error["message"].startswith("No task 'xxx") and len(error["message"]) < 120, error[
            "message"
        ][:200]
        assert "(100,000 characters)" in error["message"]
    unknown = str(uuid.uuid4())
    error = rpc(web, headers, "tasks/get", {"taskId": unknown})["error"]
    assert error["message"] == f"No task {unknown!r}."


@pytest.fixture(scope="module")
def slow_web(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebProcess]:
    """Countersign with Redis slow to answer the take of a wait's place
    (``tests.support.slow_waits_web``)."""
    with (
        django_db_blocker.unblock(),
        running_web(
            tmp_path=tmp_path_factory.mktemp("mcp-slow-waits"),
            env={"MCP_MAX_WAITS_PER_AGENT": str(MAX_WAITS)},
            app="tests.support.slow_waits_web:application",
        ) as running,
    ):
        yield running


def places_taken(agent_id: int) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return int(client.zcard(coordination.key("waits", agent_id)))
    finally:
        client.close()


def leave_a_wait(world: World, web: WebProcess, *, waiting: bool) -> float:
    """Start a countersign_wait of 60 s, close its connection once its place is taken (and,
    if ``waiting``, once it waits), and answer how long the place was held after that."""
    headers = open_session(web, world.token)
    pending = rpc(
        web, headers, "tools/call",
        {"name": "send_email", "arguments": EMAIL, "_meta": {"io.countersign/wait-seconds": 0}},
    )  # fmt: skip
    call_id = pending["result"]["structuredContent"]["id"]
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "countersign_wait", "arguments": {"call_id": call_id, "wait_seconds": 60}}}  # fmt: skip
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{web.url}/mcp", json=body, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        deadline = time.monotonic() + 10
        while not places_taken(world.agent.pk) or (waiting and not subscribers(call_id)):
            assert time.monotonic() < deadline, "the wait did not start"
            time.sleep(0.05)
    # Leaving the block closed the connection, the answer unread.
    left = time.monotonic()
    while places_taken(world.agent.pk):
        assert time.monotonic() - left < 10, "the place is still held"
        time.sleep(0.1)
    return time.monotonic() - left


def test_a_wait_whose_client_leaves_gives_its_place_back_at_once(
    live_world: World, web: WebProcess
) -> None:
    assert leave_a_wait(live_world, web, waiting=True) < 3


def test_a_wait_whose_client_leaves_while_it_takes_its_place_gives_it_back(
    live_world: World, slow_web: WebProcess
) -> None:
    """The client left while Redis took the place: the request was cancelled before it held
    the place, and nothing gave it back; it lapsed after PLACE_SECONDS (30), every wait of
    the agent's past its limit refused meanwhile. Redis answers the take 1.5 s late here."""
    assert leave_a_wait(live_world, slow_web, waiting=False) < 5
