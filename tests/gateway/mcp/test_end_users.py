"""The end user over MCP, with the official SDK's client against a real Countersign process:
``tools/list`` shows only what the user may call and ``tools/call`` refuses the rest, for a
user named in ``_meta`` or in the connection's headers, asserted by a trusted agent or
taken from a verified token (keys served by a real JWKS server); a stopped agent's requests
are refused with the reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from django.db import connections
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from approvals.models import ToolCall
from audit.models import AuditEvent
from tests.conftest import World
from tests.gateway.mcp.test_endpoint import INITIALIZE, message, post
from tests.support.identity_provider import Provider, ProviderFactory
from tests.support.web import WebProcess
from tools_registry import services
from tools_registry.models import Agent

pytestmark = pytest.mark.django_db(transaction=True)

CHECKLIST = {
    "viewer": {"risks": ["read"]},
    "support": {"risks": ["read", "write"]},
    "admin": {"risks": ["read", "write", "destructive"]},
}
READS = {"search_docs", "get_customer", "countersign_wait"}
EMAIL = {"to": "ada@example.com", "subject": "Hello", "body": "Hi"}
VIEWER = {"io.countersign/on-behalf-of": {"id": "ada", "roles": ["viewer"]}}


def run[T](main: Any) -> T:
    return anyio.run(main)  # type: ignore[no-any-return]


@asynccontextmanager
async def connected(url: str, token: str, **headers: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}", **headers}, timeout=60)
    transport = streamable_http_client(f"{url}/mcp", http_client=http)
    async with Client(transport, mode="legacy") as client:
        yield client


@pytest.fixture
def trusted(live_world: World) -> World:
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.ASSERTED
    agent.assertable_roles = list(CHECKLIST)
    agent.role_scopes = CHECKLIST
    services.save_agent(agent=agent, changed_by=None)
    return live_world


@pytest.fixture
def verifying(live_world: World, identity_providers: ProviderFactory) -> Provider:
    provider = identity_providers()
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.VERIFIED
    agent.identity_provider = provider.row
    agent.role_scopes = CHECKLIST
    services.save_agent(agent=agent, changed_by=None)
    return provider


def names(result: types.ListToolsResult) -> set[str]:
    return {tool.name for tool in result.tools}


def error_code(result: types.CallToolResult) -> str:
    assert result.is_error is True, result
    return str(result.structured_content["error"]["code"])  # type: ignore[index]


def test_the_tool_list_and_the_calls_follow_the_user_in_meta(
    trusted: World, mcp_web: WebProcess
) -> None:
    async def main() -> tuple[Any, ...]:
        async with connected(mcp_web.url, trusted.token) as client:
            everything = await client.list_tools(cache_mode="bypass")
            for_viewer = await client.list_tools(meta=VIEWER)  # type: ignore[arg-type]
            read = await client.call_tool("get_customer", {"customer_id": "cus_0002"}, meta=VIEWER)  # type: ignore[arg-type]
            write = await client.call_tool("send_email", EMAIL, meta=VIEWER)  # type: ignore[arg-type]
            return everything, for_viewer, read, write

    everything, for_viewer, read, write = run(main)
    assert names(everything) >= READS | {"send_email", "issue_refund", "delete_customer"}
    assert names(for_viewer) == READS
    assert read.is_error is False
    assert error_code(write) == "tool_not_allowed_for_user"
    assert "support" in write.structured_content["error"]["suggestion"]  # type: ignore[index]
    assert not ToolCall.objects.filter(tool__name="send_email").exists()
    refused = AuditEvent.objects.get(action="call.refused", outcome="tool_not_allowed_for_user")
    assert refused.data["transport"] == "mcp"


def test_a_framework_names_the_user_once_in_the_connections_headers(
    trusted: World, mcp_web: WebProcess
) -> None:
    """Agent frameworks set headers per connection, not _meta per request: one connection
    per user session."""
    support = json.dumps({"id": "grace", "roles": ["support"]})

    async def main() -> tuple[Any, Any]:
        async with connected(
            mcp_web.url, trusted.token, **{"Countersign-On-Behalf-Of": support}
        ) as client:
            tools = await client.list_tools()
            pending = await client.call_tool(
                "send_email",
                EMAIL,
                meta={"io.countersign/wait-seconds": 0},  # type: ignore[arg-type]
            )
            return tools, pending

    tools, pending = run(main)
    assert "send_email" in names(tools) and "delete_customer" not in names(tools)
    assert pending.structured_content["status"] == "pending"  # type: ignore[index]
    call = ToolCall.objects.get(tool__name="send_email")
    assert (call.on_behalf_of, call.end_user_roles) == ("grace", ["support"])


def test_a_role_the_agent_may_not_assert_is_refused_in_the_list_and_the_call(
    trusted: World, mcp_web: WebProcess
) -> None:
    root = {"io.countersign/on-behalf-of": {"id": "ada", "roles": ["root"]}}

    async def main() -> tuple[Any, Any]:
        async with connected(mcp_web.url, trusted.token) as client:
            with pytest.raises(MCPError) as listing:
                await client.list_tools(meta=root)  # type: ignore[arg-type]
            call = await client.call_tool("search_docs", {"query": "refund"}, meta=root)  # type: ignore[arg-type]
            return listing.value, call

    listing, call = run(main)
    assert listing.error.data["error"]["code"] == "role_not_assertable"
    assert error_code(call) == "role_not_assertable"
    assert AuditEvent.objects.filter(action="end_user.refused", outcome="role_not_assertable")
    assert AuditEvent.objects.filter(action="call.refused", outcome="role_not_assertable")


def test_a_verified_token_in_the_headers_or_in_meta_decides(
    live_world: World, verifying: Provider, mcp_web: WebProcess
) -> None:
    viewer_token = verifying.token("ada@example.com", ["viewer"])
    support_token = verifying.token("ada@example.com", ["support"])

    async def main() -> tuple[Any, ...]:
        async with connected(
            mcp_web.url, live_world.token, **{"Countersign-User-Token": viewer_token}
        ) as client:
            tools = await client.list_tools()
            refused = await client.call_tool("send_email", EMAIL)
            allowed = await client.call_tool(
                "send_email",
                EMAIL,
                meta={"io.countersign/user-token": support_token, "io.countersign/wait-seconds": 0},  # type: ignore[arg-type]
            )
            return tools, refused, allowed

    tools, refused, allowed = run(main)
    assert names(tools) == READS
    assert error_code(refused) == "tool_not_allowed_for_user"
    assert allowed.structured_content["status"] == "pending"  # type: ignore[index]
    call = ToolCall.objects.get(tool__name="send_email")
    assert (call.on_behalf_of, call.end_user_source) == ("ada@example.com", "verified")


def test_an_explicit_key_sent_for_one_verified_user_is_not_another_users_answer(
    live_world: World, verifying: Provider, mcp_web: WebProcess
) -> None:
    def meta(user: str) -> Any:
        return {
            "io.countersign/user-token": verifying.token(user, ["support"]),
            "io.countersign/idempotency-key": "shared-key",
            "io.countersign/wait-seconds": 0,
        }

    async def main() -> tuple[Any, ...]:
        async with connected(mcp_web.url, live_world.token) as client:
            ada = await client.call_tool("send_email", EMAIL, meta=meta("ada@example.com"))
            grace = await client.call_tool("send_email", EMAIL, meta=meta("grace@example.com"))
            again = await client.call_tool("send_email", EMAIL, meta=meta("ada@example.com"))
            return ada, grace, again

    ada, grace, again = run(main)
    assert ada.structured_content["status"] == "pending"  # type: ignore[index]
    assert error_code(grace) == "idempotency_key_reused"
    assert again.structured_content["id"] == ada.structured_content["id"]  # type: ignore[index]
    assert ToolCall.objects.count() == 1


def test_a_bad_token_is_refused_never_ignored(
    live_world: World, verifying: Provider, mcp_web: WebProcess
) -> None:
    expired = verifying.token("ada", ["admin"], expires_in=-300)

    async def main() -> tuple[Any, Any]:
        async with connected(
            mcp_web.url, live_world.token, **{"Countersign-User-Token": expired}
        ) as client:
            with pytest.raises(MCPError) as listing:
                await client.list_tools()
            call = await client.call_tool("search_docs", {"query": "refund"})
            return listing.value, call

    listing, call = run(main)
    assert listing.error.data["error"]["code"] == "user_token_invalid"
    assert "expired" in listing.error.data["error"]["message"]
    assert error_code(call) == "user_token_invalid"
    assert not ToolCall.objects.exists()
    trail = json.dumps(list(AuditEvent.objects.values("data")), default=str)
    assert expired not in trail


@pytest.mark.parametrize("sent", [12345, {"jwt": "x.y.z"}, ["x.y.z"], None])
def test_a_user_token_in_meta_that_is_not_a_string_is_refused_never_ignored(
    live_world: World, verifying: Provider, mcp_web: WebProcess, sent: Any
) -> None:
    """Ignored, it left the call with the agent's unscoped access (here the whole
    allowlist), and a null one dropped the connection's own token."""
    viewer = verifying.token("ada@example.com", ["viewer"])
    meta = {"io.countersign/user-token": sent, "io.countersign/wait-seconds": 0}
    headers = {"MCP-Protocol-Version": "2025-06-18", "Countersign-User-Token": viewer}

    def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}
        return message(post(mcp_web, live_world.token, body, **headers))

    listing = rpc("tools/list", {})
    call = rpc("tools/call", {"name": "send_email", "arguments": EMAIL})
    assert listing["error"]["data"]["error"]["code"] == "user_token_invalid", listing
    assert call["result"]["isError"] is True, call
    assert call["result"]["structuredContent"]["error"]["code"] == "user_token_invalid"
    assert not ToolCall.objects.exists()
    assert AuditEvent.objects.filter(action="end_user.refused", outcome="user_token_invalid")
    assert AuditEvent.objects.filter(action="call.refused", outcome="user_token_invalid")


def test_a_provider_that_is_down_is_a_retryable_refusal(
    live_world: World, verifying: Provider, mcp_web: WebProcess
) -> None:
    verifying.go_down()
    token = verifying.token("ada", ["support"])

    async def main() -> Any:
        async with connected(mcp_web.url, live_world.token) as client:
            return await client.call_tool(
                "send_email",
                EMAIL,
                meta={"io.countersign/user-token": token},  # type: ignore[arg-type]
            )

    result = run(main)
    assert error_code(result) == "identity_provider_unavailable"
    assert result.structured_content["error"]["retryable"] is True  # type: ignore[index]
    assert not ToolCall.objects.exists()


def test_malformed_json_in_the_on_behalf_of_header_is_refused_and_audited(
    live_world: World, mcp_web: WebProcess
) -> None:
    response = post(
        mcp_web, live_world.token, INITIALIZE, **{"Countersign-On-Behalf-Of": "{not json"}
    )
    assert response.status_code == 400
    assert message(response)["error"]["data"]["error"]["code"] == "invalid_end_user"
    assert AuditEvent.objects.filter(action="end_user.refused", outcome="invalid_end_user")


def test_an_unstorable_on_behalf_of_header_is_refused_and_audited(
    live_world: World, mcp_web: WebProcess
) -> None:
    header = '{"id": "x", "roles": ["\\udfff"]}'
    response = post(mcp_web, live_world.token, INITIALIZE, **{"Countersign-On-Behalf-Of": header})
    assert response.status_code == 400
    assert message(response)["error"]["data"]["error"]["code"] == "invalid_end_user"
    assert AuditEvent.objects.filter(action="end_user.refused", outcome="invalid_end_user")


def test_an_unstorable_on_behalf_of_in_a_tool_lists_meta_is_refused_and_audited(
    live_world: World, mcp_web: WebProcess
) -> None:
    """The field's name went into the refusal, and its audit event failed PostgreSQL's
    INSERT: the tool list answered JSON-RPC error 0 with the database's message."""
    meta = {"io.countersign/on-behalf-of": {"id": "ada", "\u0000": 1}}
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": meta}}
    answer = message(
        post(mcp_web, live_world.token, body, **{"MCP-Protocol-Version": "2025-06-18"})
    )
    assert answer["error"]["data"]["error"]["code"] == "invalid_end_user", answer
    assert AuditEvent.objects.filter(action="end_user.refused", outcome="invalid_end_user")


def test_a_stopped_agent_is_refused_with_the_reason(live_world: World, mcp_web: WebProcess) -> None:
    services.stop_agent(agent=live_world.agent, reason="incident 7", stopped_by=None)
    response = post(mcp_web, live_world.token, INITIALIZE)
    assert response.status_code == 403
    error = message(response)["error"]["data"]["error"]
    assert (error["code"], error["details"]["reason"]) == ("agent_stopped", "incident 7")


def test_a_session_open_when_the_agent_is_stopped_is_refused_at_its_next_request(
    live_world: World, mcp_web: WebProcess
) -> None:
    def stop() -> None:
        try:
            services.stop_agent(agent=live_world.agent, reason="incident 8", stopped_by=None)
        finally:
            # The worker thread outlives the test: give its connection back to the pool.
            connections.close_all()

    async def main() -> tuple[Any, MCPError]:
        async with connected(mcp_web.url, live_world.token) as client:
            before = await client.list_tools()
            await anyio.to_thread.run_sync(stop)
            with pytest.raises(MCPError) as refused:
                await client.list_tools(cache_mode="bypass")
            return before, refused.value

    before, refused = run(main)
    assert "search_docs" in names(before)
    assert refused.error.data["error"]["code"] == "agent_stopped"
    assert refused.error.data["error"]["details"]["reason"] == "incident 8"


def test_a_null_user_in_meta_is_not_given_and_leaves_the_connections_user(
    trusted: World, mcp_web: WebProcess
) -> None:
    """A client that writes an optional field it has no value for as null (the official
    Python SDK leaves nulls out, so the request is posted as such clients send it): as over
    REST, that is not given, and the connection's user stands. Taken as "no user", it
    dropped the viewer the header named, and the request had the agent's unscoped access
    (here the whole allowlist): a viewer's e-mail was proposed."""
    viewer = json.dumps({"id": "ada", "roles": ["viewer"]})
    meta = {"io.countersign/on-behalf-of": None, "io.countersign/wait-seconds": 0}
    headers = {"MCP-Protocol-Version": "2025-06-18", "Countersign-On-Behalf-Of": viewer}

    def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}
        return message(post(mcp_web, trusted.token, body, **headers))

    listing = rpc("tools/list", {})
    read = rpc("tools/call", {"name": "get_customer", "arguments": {"customer_id": "cus_0002"}})
    write = rpc("tools/call", {"name": "send_email", "arguments": EMAIL})
    assert {tool["name"] for tool in listing["result"]["tools"]} == READS, listing
    assert read["result"]["isError"] is False, read
    assert ToolCall.objects.get(tool__name="get_customer").on_behalf_of == "ada"
    assert write["result"]["structuredContent"]["error"]["code"] == "tool_not_allowed_for_user"
    assert not ToolCall.objects.filter(tool__name="send_email").exists()
