"""`make run` under load: agents submitting and reviewers approving from several threads at
once, long-polls waiting beside them and the sweep loop writing too. SQLite has one writer:
every request still answers (no 500, no "database is locked") and each approved call runs
exactly once, even when two reviewers approve it at the same moment. Without the embedded
database's IMMEDIATE transactions and its lock timeout (config/settings.py), concurrent
decisions and cancels were 500s."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.config import test_embedded_mode
from tests.config.test_embedded_mode import sandbox_effects, signed_in
from tests.support import ROOT

embedded_app = test_embedded_mode.embedded_app


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
    # send_email allows an agent 30 calls a minute: the module's tests stay below it.
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
