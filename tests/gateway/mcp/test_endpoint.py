"""/mcp at the HTTP level, as a misbehaving client or an attacker meets it: refused tokens
(401 with the challenge MCP clients expect), foreign origins, wrong methods, bodies that
are too big, malformed or batched JSON-RPC, unknown methods and sessions. Each gets the
protocol's error, never a 500 and never a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from approvals.models import ToolCall
from gateway.models import McpSession
from tests.conftest import World
from tests.support.web import WebProcess
from tools_registry import services as registry_services
from tools_registry.models import Agent

pytestmark = pytest.mark.django_db(transaction=True)

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "curl-by-hand", "version": "1"},
    },
}


def post(web: WebProcess, token: str | None, body: Any, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{web.url}/mcp", content=content, headers={**ACCEPT, **auth, **headers}, timeout=30
    )


def message(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether plain JSON or one SSE event."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])  # type: ignore[no-any-return]
    return response.json()  # type: ignore[no-any-return]


def test_a_missing_token_is_401_with_a_bearer_challenge(
    live_world: World, mcp_web: WebProcess
) -> None:
    response = post(mcp_web, None, INITIALIZE)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="countersign"'
    assert message(response)["error"]["data"]["error"]["code"] == "not_authenticated"


@pytest.mark.parametrize("token", ["cst_nope_nope", "not-even-a-token"])
def test_an_unknown_token_is_401_invalid_token(
    live_world: World, mcp_web: WebProcess, token: str
) -> None:
    response = post(mcp_web, token, INITIALIZE)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_disabled_agent_is_refused_as_the_rest_api_refuses_it(
    live_world: World, mcp_web: WebProcess
) -> None:
    Agent.objects.filter(pk=live_world.agent.pk).update(enabled=False)
    assert post(mcp_web, live_world.token, INITIALIZE).status_code == 401
    rest = httpx.get(
        f"{mcp_web.url}/api/v1/tools", headers={"Authorization": f"Bearer {live_world.token}"}
    )
    assert rest.status_code == 401


def test_a_foreign_origin_or_host_is_refused(live_world: World, mcp_web: WebProcess) -> None:
    assert (
        post(mcp_web, live_world.token, INITIALIZE, Origin="https://evil.example").status_code
        == 403
    )
    assert post(mcp_web, live_world.token, INITIALIZE, Host="evil.example").status_code == 400
    own_origin = post(mcp_web, live_world.token, INITIALIZE, Origin=mcp_web.url)
    assert own_origin.status_code == 200


def test_get_is_405_no_server_stream(live_world: World, mcp_web: WebProcess) -> None:
    response = httpx.get(
        f"{mcp_web.url}/mcp", headers={"Authorization": f"Bearer {live_world.token}"}
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST, DELETE"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
def test_any_other_method_is_405_from_the_endpoint_not_a_web_page(
    live_world: World, mcp_web: WebProcess, method: str
) -> None:
    """They reached Django's HTML 404 page: /mcp was routed for GET, POST and DELETE only,
    and a client was told the endpoint does not exist."""
    response = httpx.request(
        method, f"{mcp_web.url}/mcp", headers={"Authorization": f"Bearer {live_world.token}"}
    )
    assert response.status_code == 405, response.text[:200]
    assert response.headers["allow"] == "POST, DELETE"
    assert message(response)["error"]["code"] == -32600


def test_a_body_over_the_limit_is_413(
    live_world: World, mcp_web: WebProcess, settings: Any
) -> None:
    huge = {**INITIALIZE, "params": {**INITIALIZE["params"], "padding": "x" * 300_000}}  # type: ignore[dict-item]
    response = post(mcp_web, live_world.token, huge)
    assert response.status_code == 413
    assert "larger than" in message(response)["error"]["message"]


def test_malformed_json_is_a_parse_error(live_world: World, mcp_web: WebProcess) -> None:
    response = post(mcp_web, live_world.token, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert response.status_code == 400
    assert message(response)["error"]["code"] == -32700
    # Nested past any reader: the same, never a 500.
    for deep in (b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 30_000 + b"1" + b"}" * 30_000):
        response = post(mcp_web, live_world.token, deep)
        assert response.status_code == 400, response.text[:200]
        assert message(response)["error"]["code"] == -32700


@pytest.mark.parametrize("revision", ["2025-03-26", "2025-06-18", "2025-11-25"])
def test_a_batch_is_an_invalid_request_that_says_so(
    live_world: World, mcp_web: WebProcess, revision: str
) -> None:
    """The SDK serves no batch on any revision, and answered one with -32602 "Invalid
    params" and a dump of its parser's four union errors, quoting the batch."""
    ping = {"jsonrpc": "2.0", "method": "ping"}
    batch = [{**ping, "id": 1}, {**ping, "id": 2}]
    response = post(mcp_web, live_world.token, batch, **{"MCP-Protocol-Version": revision})
    assert response.status_code == 400
    error = message(response)["error"]
    assert error["code"] == -32600
    assert error["message"] == "A JSON-RPC batch is not served: send one message per request."


@pytest.mark.parametrize("body", [b"[]", b'"ping"', b"42", b"null", b"true"])
def test_json_that_is_no_message_is_an_invalid_request(
    live_world: World, mcp_web: WebProcess, body: bytes
) -> None:
    response = post(mcp_web, live_world.token, body, **{"MCP-Protocol-Version": "2025-06-18"})
    assert response.status_code == 400
    answer = message(response)
    assert answer["id"] is None and answer["error"]["code"] == -32600
    assert "pydantic" not in response.text


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "send_email"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": [1]},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"id": 1, "method": "ping"},
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
    ],
)
def test_an_object_that_is_no_json_rpc_message_is_an_invalid_request(
    live_world: World, mcp_web: WebProcess, body: dict[str, Any]
) -> None:
    """Params that are no object, no method, no "jsonrpc": "2.0". The SDK answered -32602
    ("invalid params") with its parser's six union errors, the body quoted, on every
    revision with sessions."""
    response = post(mcp_web, live_world.token, body, **{"MCP-Protocol-Version": "2025-06-18"})
    assert response.status_code == 400
    answer = message(response)
    assert answer["id"] is None and answer["error"]["code"] == -32600
    assert '"jsonrpc": "2.0"' in answer["error"]["message"]
    assert "pydantic" not in response.text and "validation error" not in response.text.lower()


@pytest.mark.parametrize("request_id", [None, True, 1.5, {"a": 1}, [1]])
def test_a_request_whose_id_is_not_a_string_or_an_integer_is_an_invalid_request(
    live_world: World, mcp_web: WebProcess, request_id: Any
) -> None:
    """The SDK took it for a notification: 202 and no answer, which its client waited for."""
    ping = {"jsonrpc": "2.0", "id": request_id, "method": "ping"}
    response = post(mcp_web, live_world.token, ping, **{"MCP-Protocol-Version": "2025-06-18"})
    assert response.status_code == 400, response.text
    assert message(response)["error"]["code"] == -32600


def test_an_unknown_method_is_method_not_found(live_world: World, mcp_web: WebProcess) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/frobnicate", "params": {}}
    response = post(mcp_web, live_world.token, call, **{"MCP-Protocol-Version": "2025-06-18"})
    assert response.status_code == 200
    answer = message(response)
    assert answer["id"] == 7 and answer["error"]["code"] == -32601


def test_a_session_is_opened_by_initialize_used_and_closed_by_delete(
    live_world: World, mcp_web: WebProcess
) -> None:
    opened = post(mcp_web, live_world.token, INITIALIZE)
    assert opened.status_code == 200
    session = opened.headers["mcp-session-id"]
    assert message(opened)["result"]["serverInfo"]["name"] == "countersign"
    headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert post(mcp_web, live_world.token, ping, **headers).status_code == 200

    auth = {"Authorization": f"Bearer {live_world.token}"}
    closed = httpx.delete(f"{mcp_web.url}/mcp", headers={**auth, "Mcp-Session-Id": session})
    assert closed.status_code == 200
    after = post(mcp_web, live_world.token, ping, **headers)
    assert after.status_code == 404, "a closed session is over: the client initializes again"


def open_at(web: WebProcess, token: str, version: str) -> str:
    body = {**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": version}}
    opened = post(web, token, body)
    assert opened.status_code == 200 and message(opened)["result"]["protocolVersion"] == version
    return opened.headers["mcp-session-id"]


TASK_CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
    "name": "send_email", "task": {},
    "arguments": {"to": "ada@example.com", "subject": "Hello", "body": "Hi"}}}  # fmt: skip


@pytest.mark.parametrize(
    "versions",
    [["2025-11-25"], ["2026-07-28"], ["2025-06-18", "2025-11-25"], ["2025-11-25", "2025-06-18"]],
)
def test_a_protocol_version_header_other_than_its_sessions_is_refused(
    live_world: World, mcp_web: WebProcess, versions: list[str]
) -> None:
    """A session initialized at 2025-06-18 reached 2025-11-25's tasks by naming that
    revision in the header of a later request: the protocol asks for the negotiated one, and
    a 400 for a version the server does not serve (every copy of the header is read)."""
    session = open_at(mcp_web, live_world.token, "2025-06-18")
    auth = {"Authorization": f"Bearer {live_world.token}", "Mcp-Session-Id": session}
    sent = [*ACCEPT.items(), *auth.items(), *(("MCP-Protocol-Version", v) for v in versions)]
    for body in (TASK_CALL, {"jsonrpc": "2.0", "id": 4, "method": "tasks/list"}):
        refused = httpx.post(
            f"{mcp_web.url}/mcp", content=json.dumps(body).encode(), headers=sent, timeout=30
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == -32600
        assert "initialized at 2025-06-18" in error["message"]
    assert not ToolCall.objects.filter(agent=live_world.agent).exists(), "no call was made"


def test_a_session_is_served_at_its_own_revision_with_or_without_the_header(
    live_world: World, mcp_web: WebProcess
) -> None:
    older = open_at(mcp_web, live_world.token, "2025-06-18")
    headers = {"Mcp-Session-Id": older, "MCP-Protocol-Version": "2025-06-18"}
    listing = {"jsonrpc": "2.0", "id": 4, "method": "tasks/list"}
    for sent in (headers, {"Mcp-Session-Id": older}):
        no_tasks = message(post(mcp_web, live_world.token, listing, **sent))
        assert no_tasks["error"]["code"] == -32601, "2025-06-18 has no tasks"
    tasks = open_at(mcp_web, live_world.token, "2025-11-25")
    # Without the header, at the revision negotiated (not 2025-03-26's, which has no tasks).
    created = message(post(mcp_web, live_world.token, TASK_CALL, **{"Mcp-Session-Id": tasks}))
    assert created["result"]["task"]["status"] == "working"


def test_another_agents_session_is_unknown(live_world: World, mcp_web: WebProcess) -> None:
    other = Agent.objects.create(name="other-bot", owner=live_world.alice)
    _, token = registry_services.issue_token(agent=other, label="tests")
    session = post(mcp_web, live_world.token, INITIALIZE).headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert post(mcp_web, token, ping, **{"Mcp-Session-Id": session}).status_code == 404


def test_tool_arguments_that_are_not_an_object_are_an_invalid_params_error(
    live_world: World, mcp_web: WebProcess
) -> None:
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "send_email", "arguments": ["not", "an", "object"]},
    }
    response = post(mcp_web, live_world.token, call, **{"MCP-Protocol-Version": "2025-06-18"})
    assert response.status_code == 200
    assert message(response)["error"]["code"] == -32602


def test_an_invalid_arguments_result_quotes_a_long_value_shortened(
    live_world: World, mcp_web: WebProcess
) -> None:
    """The MCP door answers with the REST door's problems: a 200 KB value past its
    ``maxLength`` was quoted whole in the result (in its text and its structured content)."""
    call = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "tools/call",
        "params": {
            "name": "send_email",
            "arguments": {"to": "a" * 200_000, "subject": "Hi", "body": "Hi."},
        },
    }
    response = post(mcp_web, live_world.token, call, **{"MCP-Protocol-Version": "2025-06-18"})
    assert response.status_code == 200
    result = message(response)["result"]
    assert result["isError"] is True
    error = result["structuredContent"]["error"]
    assert error["code"] == "invalid_arguments"
    assert any("(200,000 characters)" in d["message"] for d in error["details"]), error
    assert len(response.content) < 8_000, len(response.content)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        # The arguments a reviewer would approve: the SDK's parser took the last "to".
        (
            b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": '
            b'"send_email", "arguments": {"to": "a@example.com", "subject": "Hi", '
            b'"body": "Hi.", "to": "b@example.com"}}}',
            '"to"',
        ),
        # The message itself: which tool is called, which method is asked.
        (
            b'{"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": '
            b'"send_email", "name": "delete_customer", "arguments": {"customer_id": "cus_1"}}}',
            '"name"',
        ),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "method": "initialize", "params": '
            + json.dumps(INITIALIZE["params"]).encode()
            + b"}",
            '"method"',
        ),
    ],
)
def test_a_body_that_names_a_key_twice_is_an_invalid_request_that_names_it(
    live_world: World, mcp_web: WebProcess, body: bytes, named: str
) -> None:
    """As the REST API refuses such a body: the SDK read a key named twice as its last
    value, while a proxy, a log or the agent's framework may have read the first."""
    response = post(mcp_web, live_world.token, body, **{"MCP-Protocol-Version": "2025-06-18"})
    assert response.status_code == 400, response.text[:300]
    answer = message(response)
    assert answer["id"] is None and answer["error"]["code"] == -32600
    assert f"The body names {named} more than once in one object" in answer["error"]["message"]
    assert "mcp-session-id" not in response.headers
    assert not ToolCall.objects.exists(), "nothing is created of a body refused"
    assert not McpSession.objects.exists()
