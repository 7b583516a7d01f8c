"""`make run` on the embedded default (SQLite, eager executor, no services) keeps working:
start it for real, then walk an agent's write call through approval to its one effect; under
load; and with the demo agent's end users and a stop.

One `make run` serves every test here (each start migrates and seeds, some 15 s), so the
tests share its demo agent and run in this file's order: the demo queue is read before the
load adds calls to it, and the stop, which cancels every call of the agent's, comes last.
send_email allows the agent 30 calls in any minute: the demo's 2 and this file's 24 fit."""

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
from concurrent.futures import ThreadPoolExecutor
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


def signed_in(base: str, username: str) -> httpx.Client:
    """A browser-like client signed in as one of the demo's people."""
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


def approve_in_the_reviewer_ui(base: str, call_id: str, *, comment: str) -> None:
    """Sign in as the demo's reviewer and approve the call on its page, as a person would."""
    reviewer = signed_in(base, "reviewer")
    assert call_id in reviewer_queue(reviewer)
    page = reviewer.get(f"/approvals/{call_id}/")
    shown_hash = re.search(r'name="arguments_hash" value="([0-9a-f]{64})"', page.text)
    # The record the page shows beside the call (a refund's payment): the approval binds to it.
    shown_state = re.search(r'name="state_hash" value="([0-9a-f]*)"', page.text)
    assert shown_hash is not None and shown_state is not None
    decided = reviewer.post(
        f"/approvals/{call_id}/decide/",
        data={
            "verdict": "approve",
            "comment": comment,
            "arguments_hash": shown_hash.group(1),
            "state_hash": shown_state.group(1),
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


# `make run` under load: agents submitting and reviewers approving from several threads at once,
# long-polls waiting beside them and the sweep loop writing too. SQLite has one writer: every
# request still answers (no 500, no "database is locked") and each approved call runs exactly
# once, even when two reviewers approve it at the same moment. Without the embedded database's
# IMMEDIATE transactions and its lock timeout (config/settings.py), concurrent decisions and
# cancels were 500s.


def _agent(base: str, var_dir: Path) -> httpx.Client:
    token = (var_dir / "demo_agent_token").read_text().strip()
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _submit(base: str, var_dir: Path, n: int) -> httpx.Response:
    return _agent(base, var_dir).post(
        "/api/v1/tool-calls",
        headers={"Idempotency-Key": f"load-{n}"},
        json={
            "tool": "send_email",
            "arguments": {"to": f"u{n}@example.com", "subject": "Hi", "body": f"Note {n}"},
            "session_id": f"load-{n % 4}",
        },
    )


def _shown_hash(person: httpx.Client, call_id: str) -> str:
    page = person.get(f"/approvals/{call_id}/")
    shown = re.search(r'name="arguments_hash" value="([0-9a-f]{64})"', page.text)
    assert shown is not None, page.status_code
    return shown.group(1)


def _approve(person: httpx.Client, call_id: str, arguments_hash: str) -> httpx.Response:
    return person.post(
        f"/approvals/{call_id}/decide/",
        data={
            "verdict": "approve",
            "comment": "ok",
            "arguments_hash": arguments_hash,
            "csrfmiddlewaretoken": person.cookies["csrftoken"],
        },
    )


def test_concurrent_submissions_and_approvals_answer_and_run_once(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    base, var_dir, env = embedded_app
    calls = 8
    with ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(lambda n: _submit(base, var_dir, n), range(calls)))
    assert [r.status_code for r in submitted] == [202] * calls, [r.text for r in submitted]
    ids = [r.json()["id"] for r in submitted]

    reviewers = [signed_in(base, "reviewer"), signed_in(base, "reviewer2")]
    for r in reviewers:
        r.timeout = 60
    agent = _agent(base, var_dir)

    def long_poll(call_id: str) -> httpx.Response:
        return _agent(base, var_dir).get(f"/api/v1/tool-calls/{call_id}?wait=20")

    # Both reviewers open every call's page, then both approve it at once: one decides it,
    # the other is told it was decided (409).
    with ThreadPoolExecutor(4) as pool:
        shown = {i: pool.submit(_shown_hash, reviewers[0], i).result() for i in ids}
    # A second sweep loop, tighter than make run's, writes beside the web server throughout.
    sweeps = subprocess.Popen(
        [sys.executable, "manage.py", "run_sweeps", "--loop", "0.1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        more = [pool.submit(_submit, base, var_dir, calls + n) for n in range(4)]
        polls = [pool.submit(long_poll, i) for i in ids[:4]]
        decisions = [
            pool.submit(_approve, person, i, shown[i]) for i in ids for person in reviewers
        ]
        reads = [pool.submit(agent.get, "/api/v1/tools") for _ in range(8)]
        answered = [f.result() for f in decisions + reads + polls + more]
    elapsed = time.monotonic() - started
    sweeps.terminate()
    _, sweep_errors = sweeps.communicate(timeout=30)
    assert b"Traceback" not in sweep_errors, sweep_errors.decode()[-3000:]
    assert [r.status_code for r in answered if r.status_code >= 500] == [], [
        r.text[:300] for r in answered if r.status_code >= 500
    ]
    assert elapsed < 60, elapsed
    assert [f.result().status_code for f in more] == [202] * len(more)
    assert (
        sorted(r.status_code for r in answered[: len(decisions)]) == [200] * calls + [409] * calls
    )

    statuses = {i: agent.get(f"/api/v1/tool-calls/{i}").json()["status"] for i in ids}
    assert set(statuses.values()) == {"succeeded"}, statuses
    sent = {e["idempotency_key"]: e["deliveries"] for e in sandbox_effects(env, "send_email")}
    assert {i: sent.get(f"countersign-{i}") for i in ids} == {i: 1 for i in ids}


def test_two_reviewers_completing_a_quorum_at_once_run_it_once(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    """A call that needs two reviewers, approved by both at the same moment: both approvals
    count, and the call runs once."""
    base, var_dir, env = embedded_app
    agent = _agent(base, var_dir)
    ids = []
    for n in range(3):
        submitted = agent.post(
            "/api/v1/tool-calls",
            headers={"Idempotency-Key": f"quorum-{n}"},
            json={
                "tool": "send_email",
                "arguments": {
                    "to": f"q{n}@example.com",
                    "subject": "Offer",
                    "body": f"See https://offers.example.net/{n}",
                },
                "session_id": "quorum",
            },
        )
        assert submitted.status_code == 202 and submitted.json()["approvals_required"] == 2
        ids.append(submitted.json()["id"])
    reviewers = [signed_in(base, "reviewer"), signed_in(base, "reviewer2")]
    shown = {i: _shown_hash(reviewers[0], i) for i in ids}
    with ThreadPoolExecutor(4) as pool:
        decided = list(
            pool.map(lambda job: _approve(*job), [(p, i, shown[i]) for i in ids for p in reviewers])
        )
    assert [r.status_code for r in decided] == [200] * len(decided), [
        r.text[:300] for r in decided if r.status_code != 200
    ]
    statuses = {i: agent.get(f"/api/v1/tool-calls/{i}").json()["status"] for i in ids}
    assert set(statuses.values()) == {"succeeded"}, statuses
    sent = {e["idempotency_key"]: e["deliveries"] for e in sandbox_effects(env, "send_email")}
    assert {i: sent.get(f"countersign-{i}") for i in ids} == {i: 1 for i in ids}


def test_an_agents_cancel_racing_an_approval_runs_the_call_once_or_never(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    """The agent withdraws calls while a reviewer approves them: one of the two wins (the
    other is a 409), and a call runs once if approved, never if cancelled."""
    base, var_dir, env = embedded_app
    ids = [_submit(base, var_dir, 300 + n).json()["id"] for n in range(6)]
    reviewer = signed_in(base, "reviewer")
    shown = {i: _shown_hash(reviewer, i) for i in ids}
    agent = _agent(base, var_dir)
    with ThreadPoolExecutor(4) as pool:
        approvals = [pool.submit(_approve, reviewer, i, shown[i]) for i in ids]
        cancels = [pool.submit(agent.post, f"/api/v1/tool-calls/{i}/cancel") for i in ids]
        answers = [
            (a.result().status_code, c.result().status_code)
            for a, c in zip(approvals, cancels, strict=True)
        ]
    assert all(sorted(pair) == [200, 409] for pair in answers), answers
    statuses = {i: agent.get(f"/api/v1/tool-calls/{i}").json()["status"] for i in ids}
    sent = {e["idempotency_key"]: e["deliveries"] for e in sandbox_effects(env, "send_email")}
    assert {i: sent.get(f"countersign-{i}") for i in ids} == {
        i: 1 if statuses[i] == "succeeded" else None for i in ids
    }
    assert set(statuses.values()) <= {"succeeded", "cancelled"}, statuses


# `make run` (the embedded default) with the demo agent's end users: a `viewer` sees and may
# call only the read tools, a `support` user the writes too, over REST and MCP; and `manage.py
# stop_agent demo-agent --reason "incident"` empties the queue of its calls and makes its next
# request answer 403 `agent_stopped` with the reason.

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


def reviewer_queue(reviewer: httpx.Client) -> str:
    queue = reviewer.get("/approvals/")
    assert queue.status_code == 200 and queue.url.path == "/approvals/", "signed in"
    return queue.text


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
    queue = reviewer_queue(signed_in(base, "reviewer"))
    assert all(call_id in queue for call_id in waiting)

    stopped = manage(env, "stop_agent", "demo-agent", "--reason", "incident")
    # Ours and the demo agent's own calls (make run sends some once it is up) are cancelled.
    count = re.search(r"cancelled (\d+) call\(s\)", stopped)
    assert count and int(count.group(1)) >= 2 and all(c in stopped for c in waiting)
    queue = reviewer_queue(signed_in(base, "reviewer"))
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


def test_the_team_admin_on_sqlite_refuses_to_delete_the_team_a_demo_rule_names(
    embedded_app: tuple[str, Path, dict[str, str]],
) -> None:
    """The check that a policy rule names the team (jsonb containment on PostgreSQL) works
    on the embedded SQLite too: the delete page answered 500 there, for every team."""
    base, _, _ = embedded_app
    admin = signed_in(base, "admin")
    teams = dict(
        (name, team_id)
        for team_id, name in re.findall(
            r'href="/admin/auth/group/(\d+)/change/">([^<]+)<', admin.get("/admin/auth/group/").text
        )
    )
    named = admin.get(f"/admin/auth/group/{teams['reviewers']}/delete/")
    assert named.status_code == 200
    assert "Tool: issue_refund (its policy rules name the team" in named.text
    unnamed = admin.get(f"/admin/auth/group/{teams['auditors']}/delete/")
    assert unnamed.status_code == 200 and 'name="post" value="yes"' in unnamed.text
    renamed = admin.get(f"/admin/auth/group/{teams['reviewers']}/change/")
    kept = admin.post(
        f"/admin/auth/group/{teams['reviewers']}/change/",
        data={"name": "reviewers-renamed", "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
    )
    assert renamed.status_code == 200 and kept.status_code == 200
    assert "Not renamed. The policy rules of issue_refund name the team" in kept.text


def test_a_second_make_run_on_a_taken_port_stops_before_seeding(
    embedded_app: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    """Started on the port another one serves, `make run` says so at once. It seeded a new
    var dir, then uvicorn failed to bind some 40 s later, while its demo calls went to the
    other server with this var dir's token (eight 401s in its log)."""
    base, _, _ = embedded_app
    port = int(base.rsplit(":", 1)[1])
    second = subprocess.run(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=ROOT, env=embedded_env(tmp_path, port), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"Port {port} on 127.0.0.1 is taken" in second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing seeded, nothing sent"
