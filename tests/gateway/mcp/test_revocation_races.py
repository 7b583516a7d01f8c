"""A token revoked while an MCP ``tools/call`` made with it is under way (a real Countersign
web process, PostgreSQL, the identity provider's keys served by this process): authenticated
before the revocation committed, the call is refused as the REST API refuses it, and no call
is made. And a caller is never logged with its end user's token."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from approvals.models import ToolCall
from gateway.mcp.calls import Caller
from tests.conftest import World, events
from tests.gateway.mcp.test_endpoint import message, post
from tests.support.identity_provider import Provider, ProviderFactory
from tests.support.web import WebProcess
from tools_registry import services
from tools_registry.models import Agent, AgentToken

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = {"to": "ada@example.com", "subject": "Hello", "body": "Hi"}


@pytest.fixture
def verifying(live_world: World, identity_providers: ProviderFactory) -> Provider:
    provider = identity_providers()
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.VERIFIED
    agent.identity_provider = provider.row
    agent.role_scopes = {"support": {"risks": ["read", "write"]}}
    services.save_agent(agent=agent, changed_by=None)
    return provider


def _tools_call(user_token: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "send_email",
            "arguments": EMAIL,
            "_meta": {"io.countersign/user-token": user_token, "io.countersign/wait-seconds": 0},
        },
    }


@pytest.mark.parametrize("attempt", range(3))
def test_a_tools_call_authenticated_before_a_revocation_creates_no_call(
    live_world: World, verifying: Provider, mcp_web: WebProcess, attempt: int
) -> None:
    user = verifying.token("ada@example.com", ["support"])
    version = {"MCP-Protocol-Version": "2025-06-18"}
    with ThreadPoolExecutor(1) as pool:
        with verifying.answering_late() as asked:
            calling = pool.submit(post, mcp_web, live_world.token, _tools_call(user), **version)
            assert asked.wait(20), "the call verifies its user's token"
            services.revoke_token(token=AgentToken.objects.get(agent=live_world.agent))
        response = calling.result(timeout=30)
    assert response.status_code == 200, response.text
    result = message(response)["result"]
    assert result["isError"] is True
    assert result["structuredContent"]["error"]["code"] == "not_authenticated", result
    assert not ToolCall.objects.exists(), "no call, so nothing to approve and run"
    [refusal] = events("call.refused")
    assert (refusal.outcome, refusal.data["transport"]) == ("not_authenticated", "mcp")
    # The next request is refused at the door, as before.
    assert post(mcp_web, live_world.token, _tools_call(user), **version).status_code == 401


def test_a_caller_is_never_shown_with_its_tokens() -> None:
    caller = Caller(
        agent=Agent(name="bot"),
        session_id="",
        client="",
        token_id=1,
        user_token="eyJ-the-users-token",
        bearer="cst_abc_the-agents-secret",
    )
    assert "eyJ-the-users-token" not in repr(caller)
    assert "the-agents-secret" not in repr(caller)
