"""`make run` on the embedded default (SQLite, eager executor, no services) keeps working:
start it for real, then walk an agent's write call through approval to its one effect."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
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

from sandbox.demo_calls import CALLS as DEMO_CALLS
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
                "amount_cents": 15000,
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
    assert status["result"]["amount_cents"] == 15000

    # One effect for this call (the demo agent's small refunds, approved by rule, are others).
    refunds = sandbox_effects(env, "issue_refund")
    assert [
        (e["idempotency_key"], e["deliveries"])
        for e in refunds
        if e["idempotency_key"] == f"countersign-{call_id}"
    ] == [(f"countersign-{call_id}", 1)]


def test_a_key_whose_record_was_swept_is_refused_in_the_embedded_mode(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    """SQLite names a unique key's columns, not its constraint: the same 422 as on
    PostgreSQL (tests/gateway/test_idempotency.py), not an internal error."""
    base, var_dir, _ = embedded_app
    token = (var_dir / "demo_agent_token").read_text().strip()
    agent = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
    body = {"tool": "get_customer", "arguments": {"customer_id": "cus_0002"}, "session_id": "e-1"}
    first = agent.post(
        "/api/v1/tool-calls", headers={"Idempotency-Key": "embedded-swept"}, json=body
    )
    assert first.status_code == 200, first.text
    with sqlite3.connect(var_dir / "countersign.sqlite3") as db:  # what the sweep does
        db.execute("DELETE FROM approvals_idempotencyrecord WHERE key = 'embedded-swept'")
    again = agent.post(
        "/api/v1/tool-calls", headers={"Idempotency-Key": "embedded-swept"}, json=body
    )
    assert again.status_code == 422, again.text
    assert again.json()["error"]["code"] == "idempotency_key_expired"


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


def demo_call_ids(base: str, token: str) -> dict[str, dict[str, Any]]:
    """The demo agent's calls (sent by `make run` once it is up), found by sending each
    request again with its key: the answer is the stored one, with the call's id."""
    agent = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    for key, body in DEMO_CALLS:
        while True:
            response = agent.post("/api/v1/tool-calls", json=body, headers={"Idempotency-Key": key})
            if response.headers.get("Idempotent-Replayed") == "true" or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # not sent by the demo yet: our request made it (same key, same body)
        found[key] = response.json()
    return found


def signed_in(base: str, username: str) -> httpx.Client:
    person = httpx.Client(base_url=base, follow_redirects=True)
    person.get("/login/")
    person.post(
        "/login/",
        data={
            "username": username,
            "password": PASSWORD,
            "csrfmiddlewaretoken": person.cookies["csrftoken"],
        },
    )
    return person


def test_the_demo_queue_tells_refunds_apart_and_flags_the_phishing_email(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    """The reviewer issue's demo: a 990 USD and a 120 USD refund read differently in the
    queue; the 12.50 GBP one was approved by the demo rule (the trail says which) and ran;
    the 990 USD one needs two reviewers; the phishing-like e-mail shows its link and its
    injection-like reasoning in the queue and on its page, and needs two reviewers."""
    base, var_dir, _ = embedded_app
    calls = demo_call_ids(base, (var_dir / "demo_agent_token").read_text().strip())
    small, large = calls["demo-refund-gbp-12.50"], calls["demo-refund-usd-990"]
    phishing = calls["demo-email-phishing"]
    assert small["decision"]["by"] == "policy_rule" and small["approvals_required"] == 0
    assert (large["status"], large["approvals_required"]) == ("pending", 2)
    assert (phishing["status"], phishing["approvals_required"]) == ("pending", 2)

    reviewer = signed_in(base, "reviewer")
    queue = reviewer.get("/approvals/").text
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r'data-call-id="([^"]+)"(.*?)</tr>', queue, re.S)
    }
    assert "990.00 USD" in rows[large["id"]]
    assert "120.00 USD" in rows[calls["demo-refund-usd-120"]["id"]]
    assert small["id"] not in rows  # approved by rule: nothing waits
    assert 'data-signal="external_link"' in rows[phishing["id"]]
    assert 'data-signal="prompt_injection"' in rows[phishing["id"]]
    assert "a***@example.com" in rows[phishing["id"]]  # the list's domain, no reveal needed
    page = reviewer.get(f"/approvals/{phishing['id']}/").text
    assert "account-verify.example.net" in page and "Ignore previous instructions" in page
    assert "0 of 2 approvals" in page

    auditor = signed_in(base, "auditor")
    trail = [
        json.loads(line)
        for line in auditor.get(f"/audit/export.jsonl?call={small['id']}").text.splitlines()
        if line.strip()
    ]
    approved = [e for e in trail if e["action"] == "call.approved"]
    assert approved and approved[0]["data"]["by"] == "rule" and approved[0]["data"]["rule"] == 1
    assert any(
        e["action"] == "call.execution_finished" and e["outcome"] == "succeeded" for e in trail
    )
