"""`make run` on the embedded default (SQLite, eager executor, no services) keeps working:
start it for real, then walk an agent's write call through approval to its one effect."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.sandbox.test_demo import IMPORTED
from tests.support import ROOT
from tests.support.web import free_port

PASSWORD = "embedded-demo-pass-1"


def embedded_env(var_dir: Path, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}
    }
    env.update(COUNTERSIGN_VAR_DIR=str(var_dir), PORT=str(port), DEMO_PASSWORD=PASSWORD)
    return env


@pytest.fixture(scope="module")
def embedded_app(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    var_dir = tmp_path_factory.mktemp("embedded-var")
    port = free_port()
    env = embedded_env(var_dir, port)
    log_path = var_dir / "make-run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"PORT={port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"make run did not come up:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.3)
        yield base, var_dir, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_make_run_serves_health_and_the_login_page(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    base, _, _ = embedded_app
    health = httpx.get(f"{base}/healthz").json()
    assert health == {
        "database": "ok",
        "cache": "ok",
        "broker": "eager",
        "status": "ok",
        "mode": "embedded",
    }
    login = httpx.get(f"{base}/login/")
    assert login.status_code == 200
    assert "Sign in" in login.text
    assert "script-src 'self' 'nonce-" in login.headers["Content-Security-Policy"]


def approve_in_the_reviewer_ui(base: str, call_id: str, *, comment: str) -> None:
    """Sign in as the demo's reviewer and approve the call on its page, as a person would."""
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
    assert call_id in signed_in.text
    page = reviewer.get(f"/approvals/{call_id}/")
    shown_hash = re.search(r'name="arguments_hash" value="([0-9a-f]{64})"', page.text)
    assert shown_hash is not None
    decided = reviewer.post(
        f"/approvals/{call_id}/decide/",
        data={
            "verdict": "approve",
            "comment": comment,
            "arguments_hash": shown_hash.group(1),
            "csrfmiddlewaretoken": reviewer.cookies["csrftoken"],
        },
    )
    assert decided.status_code == 200


def sandbox_effects(env: dict[str, str], tool: str) -> list[dict[str, object]]:
    effects = subprocess.run(
        [sys.executable, "manage.py", "sandbox_effects"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [e for line in effects.splitlines() if (e := json.loads(line))["tool"] == tool]


def test_an_approved_refund_runs_once_in_the_embedded_mode(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    base, var_dir, env = embedded_app
    token = (var_dir / "demo_agent_token").read_text().strip()
    agent = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
    submitted = agent.post(
        "/api/v1/tool-calls",
        headers={"Idempotency-Key": "embedded-refund-1"},
        json={
            "tool": "issue_refund",
            "arguments": {
                "payment_id": "pay_0003",
                "amount_cents": 1500,
                "currency": "usd",
                "reason": "Damaged item",
            },
            "session_id": "embedded-1",
        },
    )
    assert submitted.status_code == 202, submitted.text
    call_id = submitted.json()["id"]

    approve_in_the_reviewer_ui(base, call_id, comment="Photo of the damage attached.")

    # The eager executor ran the refund right after the approval committed.
    status = agent.get(f"/api/v1/tool-calls/{call_id}").json()
    assert status["status"] == "succeeded", status
    assert status["result"]["amount_cents"] == 1500

    refunds = sandbox_effects(env, "issue_refund")
    assert [(e["idempotency_key"], e["deliveries"]) for e in refunds] == [
        (f"countersign-{call_id}", 1)
    ]


def test_an_mcp_client_gets_an_approved_email_sent_once_in_the_embedded_mode(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    """The official MCP SDK client pointed at `make run`'s /mcp with the demo token: the
    six demo tools, a read, and a write that waits for the reviewer, then runs once."""
    base, var_dir, env = embedded_app
    token = (var_dir / "demo_agent_token").read_text().strip()
    email = {"to": "ada@example.com", "subject": "Hello", "body": "Your refund is on its way."}

    async def client_session(steps: Any) -> Any:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        transport = streamable_http_client(f"{base}/mcp", http_client=http)
        async with Client(transport, mode="legacy") as client:
            return await steps(client)

    async def submit(client: Client) -> tuple[list[str], Any, Any]:
        tools = [t.name for t in (await client.list_tools()).tools]
        found = await client.call_tool("search_docs", {"query": "refund"})
        pending = await client.call_tool(
            "send_email",
            email,
            meta={"io.countersign/wait-seconds": 0},  # type: ignore[arg-type]
        )
        return tools, found, pending

    tools, found, pending = anyio.run(client_session, submit)
    assert set(tools) == {
        "search_docs", "get_customer", "send_email", "update_customer", "issue_refund",
        "delete_customer", "countersign_wait", *IMPORTED,
    }  # fmt: skip
    assert found.structured_content["articles"][0]["slug"] == "refund-policy"
    call_id = pending.structured_content["id"]
    assert pending.structured_content["status"] == "pending"

    approve_in_the_reviewer_ui(base, call_id, comment="The customer asked for it.")

    async def wait(client: Client) -> Any:
        return await client.call_tool("countersign_wait", {"call_id": call_id, "wait_seconds": 30})

    sent = anyio.run(client_session, wait)
    assert sent.is_error is False and sent.structured_content["status"] == "sent"
    emails = sandbox_effects(env, "send_email")
    assert [(e["idempotency_key"], e["deliveries"]) for e in emails] == [
        (f"countersign-{call_id}", 1)
    ]


def test_an_approved_ticket_from_the_demos_mcp_upstream_is_created_once(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    """`make run` imports the sandbox's ticketing MCP server as the upstream `tickets`: the
    demo agent's approved call reaches it over MCP, and it makes exactly one ticket."""
    base, var_dir, env = embedded_app
    token = (var_dir / "demo_agent_token").read_text().strip()
    agent = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
    submitted = agent.post(
        "/api/v1/tool-calls",
        headers={"Idempotency-Key": "embedded-ticket-1"},
        json={
            "tool": "tickets__create_ticket",
            "arguments": {"title": "Printer on fire", "body": "Third floor, room 301."},
            "session_id": "embedded-2",
        },
    )
    assert submitted.status_code == 202, submitted.text
    call_id = submitted.json()["id"]
    approve_in_the_reviewer_ui(base, call_id, comment="Facilities asked for a ticket.")
    status = agent.get(f"/api/v1/tool-calls/{call_id}").json()
    assert status["status"] == "succeeded", status
    assert status["result"]["title"] == "Printer on fire"
    tickets = sandbox_effects(env, "tickets.create_ticket")
    assert [(e["idempotency_key"], e["deliveries"]) for e in tickets] == [
        (f"countersign-{call_id}", 1)
    ]
