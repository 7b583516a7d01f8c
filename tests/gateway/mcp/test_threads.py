"""The threads /mcp does its Django work in: reads that take long (a slow upstream) hold
theirs for as long, and must not hold up every other agent's requests to that process."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import mcp_types as types
import pytest

from gateway.mcp import waiting
from tests.conftest import World
from tests.gateway.mcp.test_endpoint import ACCEPT, message
from tests.support.upstreams.raw_http import reply
from tests.support.upstreams.raw_mcp import RawMcpServer
from tests.support.web import WebProcess, running_web
from tools_registry import services as registry_services
from tools_registry.models import Agent, AgentToken, Tool, Upstream
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams import mcp as upstream_mcp

pytestmark = pytest.mark.django_db(transaction=True)

VERSION = {"MCP-Protocol-Version": "2025-06-18"}
LOOKUP = {
    "name": "lookup",
    "description": "Look a record up in a slow system.",
    "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}},
    "annotations": {"readOnlyHint": True},
}
# As many reads as asyncio's default executor holds threads on this machine
# (ThreadPoolExecutor's default: 6 on 2 cores), below MCP_THREADS' default of 32.
SLOW_READS = min(31, (os.process_cpu_count() or 1) + 4)


@pytest.fixture(scope="module")
def web(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebProcess]:
    """MCP_THREADS at its default; a database pool of two connections, fewer than the slow
    reads (each gives its connection back while its upstream takes its time)."""
    with (
        django_db_blocker.unblock(),
        running_web(
            tmp_path=tmp_path_factory.mktemp("mcp-threads"),
            env={"DB_POOL_MAX_SIZE": "2"},
        ) as running,
    ):
        yield running


@pytest.fixture
def slow_upstream() -> Iterator[tuple[RawMcpServer, threading.Event]]:
    """An MCP server whose every tools/call waits until the test releases it (at most 15 s)."""
    released = threading.Event()

    def answer_late(handler: Any, msg: dict[str, Any]) -> None:
        released.wait(15)
        reply(handler, 200, {"jsonrpc": "2.0", "id": msg["id"], "result": {
            "content": [{"type": "text", "text": "found"}]}})  # fmt: skip

    server = RawMcpServer(answer_late, tools=[LOOKUP])
    try:
        yield server, released
    finally:
        released.set()
        server.close()


def call(web: WebProcess, token: str, method: str, params: Any, timeout: float) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    headers = {**ACCEPT, **VERSION, "Authorization": f"Bearer {token}"}
    answered = httpx.post(f"{web.url}/mcp", json=body, headers=headers, timeout=timeout)
    assert answered.status_code == 200, answered.text
    return message(answered)


def test_slow_reads_do_not_hold_up_another_agents_requests(
    live_world: World, web: WebProcess, slow_upstream: tuple[RawMcpServer, threading.Event]
) -> None:
    """Every piece of /mcp's Django work ran on the event loop's default executor, six
    threads on a 2-core machine: six reads waiting for a slow upstream held them all, and
    every other request of that process (another agent's token check, tools/list, the
    short reads that end long waits) waited for them. And each held a database connection
    while its upstream took its time: with fewer in the pool than slow reads, the reads past
    the pool and every other request waited for one, then failed (500)."""
    server, released = slow_upstream
    upstream = register_upstream(name="slow", kind=Upstream.Kind.MCP, url=server.url)
    sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: upstream_mcp.offer_from(u.name, [types.Tool.model_validate(LOOKUP)]),
    )
    tool = Tool.objects.get(name="slow__lookup")
    Tool.objects.filter(pk=tool.pk).update(timeout_seconds=30, max_attempts=1)
    live_world.agent.allowed_tools.add(tool)
    other = Agent.objects.create(name="other-bot", owner=live_world.alice)
    other.allowed_tools.add(live_world.tools["search_docs"])
    _, other_token = registry_services.issue_token(agent=other, label="tests")

    reads = SLOW_READS
    with ThreadPoolExecutor(reads) as pool:
        slow = [
            pool.submit(
                call,
                web,
                live_world.token,
                "tools/call",
                {"name": "slow__lookup", "arguments": {"n": n}},
                60,
            )
            for n in range(reads)
        ]
        try:
            deadline = time.monotonic() + 30
            while len(server.calls) < reads:
                assert time.monotonic() < deadline, f"{len(server.calls)} of {reads} reads began"
                time.sleep(0.1)
            # Another agent's listing and quick read (a token check, then database work).
            began = time.monotonic()
            try:
                listed = call(web, other_token, "tools/list", {}, 5)
                search = {"name": "search_docs", "arguments": {"query": "refund"}}
                searched = call(web, other_token, "tools/call", search, 5)
            except httpx.TimeoutException:
                listed = searched = None
            took = time.monotonic() - began
        finally:
            released.set()
        results = [future.result() for future in slow]
    assert listed is not None, f"another agent waited past 5 s behind {reads} slow reads"
    assert listed["result"]["tools"][0]["name"] == "search_docs"
    assert searched is not None and not searched["result"]["isError"], searched
    assert took < 4, f"another agent's two requests took {took:.1f} s behind {reads} slow reads"
    assert all(not r["result"].get("isError") for r in results), results


def test_a_read_that_outlasts_its_tokens_revocation_hands_it_no_result(
    live_world: World, web: WebProcess, slow_upstream: tuple[RawMcpServer, threading.Event]
) -> None:
    """The read waited on its upstream for longer than a wait's recheck, and the token (a
    leak found) was revoked meanwhile: the answer was the result, where a wait as long is
    refused. It is refused too."""
    server, released = slow_upstream
    upstream = register_upstream(name="slow", kind=Upstream.Kind.MCP, url=server.url)
    sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: upstream_mcp.offer_from(u.name, [types.Tool.model_validate(LOOKUP)]),
    )
    tool = Tool.objects.get(name="slow__lookup")
    Tool.objects.filter(pk=tool.pk).update(timeout_seconds=30, max_attempts=1)
    live_world.agent.allowed_tools.add(tool)
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(
            call, web, live_world.token, "tools/call", {"name": "slow__lookup", "arguments": {}}, 60
        )
        deadline = time.monotonic() + 30
        while not server.calls:
            assert time.monotonic() < deadline, "the read never reached its upstream"
            time.sleep(0.05)
        for token in AgentToken.objects.filter(agent=live_world.agent):
            registry_services.revoke_token(token=token)
        time.sleep(waiting.RECHECK_SECONDS)
        released.set()
        answered = reading.result(timeout=60)
    assert answered["result"]["isError"] is True, answered
    assert answered["result"]["structuredContent"]["error"]["code"] == "not_authenticated"
    assert "found" not in json.dumps(answered)
