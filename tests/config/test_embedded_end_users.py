"""`make run` (the embedded default) with the demo agent's end users: a `viewer` sees and
may call only the read tools, a `support` user the writes too, over REST and MCP; and
`manage.py stop_agent demo-agent --reason "incident"` empties the queue of its calls and
makes its next request answer 403 `agent_stopped` with the reason."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.config import test_embedded_mode
from tests.config.test_embedded_mode import PASSWORD
from tests.support import ROOT

# `make run` for this module (the fixture of test_embedded_mode, started once here).
embedded_app = test_embedded_mode.embedded_app

EMAIL = {"to": "ada@example.com", "subject": "Hello", "body": "Your refund is on its way."}


def agent_of(base: str, var_dir: Path) -> httpx.Client:
    token = (var_dir / "demo_agent_token").read_text().strip()
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})


def listed(agent: httpx.Client, roles: str) -> dict[str, Any]:
    response = agent.get(f"/api/v1/tools?format=mcp&on_behalf_of=ada&roles={roles}")
    assert response.status_code == 200, response.text
    return {t["name"]: t for t in response.json()}


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def reviewer_queue(base: str) -> str:
    reviewer = httpx.Client(base_url=base, follow_redirects=True)
    reviewer.get("/login/")
    signed_in = reviewer.post(
        "/login/",
        data={
            "username": "reviewer",
            "password": PASSWORD,
            "csrfmiddlewaretoken": reviewer.cookies["csrftoken"],
        },
    )
    assert signed_in.url.path == "/approvals/"
    return signed_in.text


def test_viewers_read_support_also_writes_and_a_stop_empties_the_queue(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    base, var_dir, env = embedded_app
    agent = agent_of(base, var_dir)

    viewer = listed(agent, "viewer")
    assert {"search_docs", "get_customer"} <= set(viewer)
    assert all(t["annotations"]["readOnlyHint"] for t in viewer.values()), "reads only"
    support = listed(agent, "support")
    assert {"send_email", "issue_refund"} <= set(support) and "delete_customer" not in support
    assert "delete_customer" in listed(agent, "admin")

    def submit(tool: str, arguments: dict[str, Any], roles: list[str], key: str) -> Any:
        return agent.post(
            "/api/v1/tool-calls",
            headers={"Idempotency-Key": key},
            json={
                "tool": tool,
                "arguments": arguments,
                "session_id": "embedded-roles",
                "on_behalf_of": {"id": "ada", "roles": roles},
            },
        )

    assert submit("search_docs", {"query": "refund"}, ["viewer"], "roles-1").status_code == 200
    refused = submit("send_email", EMAIL, ["viewer"], "roles-2")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "tool_not_allowed_for_user"
    waiting = [submit("send_email", EMAIL, ["support"], f"roles-{n}").json()["id"] for n in (3, 4)]
    mcp_tools, mcp_write = anyio.run(_mcp_as_a_viewer, base, var_dir)
    assert set(mcp_tools) == set(viewer) | {"countersign_wait"}
    assert mcp_write["error"]["code"] == "tool_not_allowed_for_user"
    queue = reviewer_queue(base)
    assert all(call_id in queue for call_id in waiting)

    stopped = manage(env, "stop_agent", "demo-agent", "--reason", "incident")
    # Ours and the demo agent's own calls (make run sends some once it is up) are cancelled.
    count = re.search(r"cancelled (\d+) call\(s\)", stopped)
    assert count and int(count.group(1)) >= 2 and all(c in stopped for c in waiting)
    queue = reviewer_queue(base)
    assert "data-call-id" not in queue, "the queue holds none of its calls"
    refusal = agent.get("/api/v1/tools")
    assert refusal.status_code == 403
    assert refusal.json()["error"]["code"] == "agent_stopped"
    assert refusal.json()["error"]["details"]["reason"] == "incident"
    mcp = httpx.post(
        f"{base}/mcp",
        headers={**agent.headers, "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert mcp.status_code == 403 and "incident" in mcp.text

    # Resumed (so the demo goes on), the cancelled calls stay cancelled, with the reason.
    assert "Resumed demo-agent" in manage(env, "resume_agent", "demo-agent")
    call = agent.get(f"/api/v1/tool-calls/{waiting[0]}").json()
    assert call["status"] == "cancelled" and call["error"]["reason"] == "incident"


async def _mcp_as_a_viewer(base: str, var_dir: Path) -> tuple[list[str], dict[str, Any]]:
    token = (var_dir / "demo_agent_token").read_text().strip()
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    meta: Any = {"io.countersign/on-behalf-of": {"id": "ada", "roles": ["viewer"]}}
    async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
        tools = [t.name for t in (await client.list_tools(meta=meta)).tools]
        refused = await client.call_tool("send_email", EMAIL, meta=meta)
        return tools, refused.structured_content or {}
