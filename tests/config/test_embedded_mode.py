"""`make run` on the embedded default (SQLite, eager executor, no services) keeps working:
start it for real, then walk an agent's write call through approval to its one effect."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT

PASSWORD = "embedded-demo-pass-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
            "comment": "Photo of the damage attached.",
            "arguments_hash": shown_hash.group(1),
            "csrfmiddlewaretoken": reviewer.cookies["csrftoken"],
        },
    )
    assert decided.status_code == 200

    # The eager executor ran the refund right after the approval committed.
    status = agent.get(f"/api/v1/tool-calls/{call_id}").json()
    assert status["status"] == "succeeded", status
    assert status["result"]["amount_cents"] == 1500

    effects = subprocess.run(
        [sys.executable, "manage.py", "sandbox_effects"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    refunds = [
        json.loads(line)
        for line in effects.splitlines()
        if json.loads(line)["tool"] == "issue_refund"
    ]
    assert [(e["idempotency_key"], e["deliveries"]) for e in refunds] == [
        (f"countersign-{call_id}", 1)
    ]
