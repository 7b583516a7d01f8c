"""seed_demo, the management command people run by hand to set up the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client

from tests.sandbox.test_demo import IMPORTED
from tests.support import ROOT
from tests.support.web import free_port
from tools_registry.models import Agent, AgentToken, Tool
from tools_registry.permissions import can_reveal, can_review
from tools_registry.services import authenticate_token

pytestmark = pytest.mark.django_db

DEMO_TOOLS = {
    "search_docs",
    "get_customer",
    "send_email",
    "update_customer",
    "issue_refund",
    "delete_customer",
}


def test_seed_demo_is_idempotent_and_lets_the_reviewer_review_every_demo_tool(
    monkeypatch, settings, tmp_path
) -> None:
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("DEMO_PASSWORD", "demo-pass-123")
    call_command("seed_demo", stdout=StringIO())
    counts = (
        User.objects.count(),
        Group.objects.count(),
        Agent.objects.count(),
        AgentToken.objects.count(),
        Tool.objects.count(),
    )
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert (
        User.objects.count(),
        Group.objects.count(),
        Agent.objects.count(),
        AgentToken.objects.count(),
        Tool.objects.count(),
    ) == counts

    assert {g.name for g in Group.objects.all()} >= {"reviewers", "tool-admins", "auditors"}
    reviewer = User.objects.get(username="reviewer")
    assert reviewer.check_password("demo-pass-123")
    assert all(can_review(reviewer, tool) for tool in Tool.objects.filter(name__in=DEMO_TOOLS))
    assert not any(
        can_review(User.objects.get(username="auditor"), tool) for tool in Tool.objects.all()
    )
    demo_tools = Tool.objects.filter(name__in=DEMO_TOOLS)
    assert all(can_reveal(reviewer, tool) for tool in demo_tools)
    assert not any(can_reveal(User.objects.get(username="reviewer2"), tool) for tool in demo_tools)
    agent = Agent.objects.get(name="demo-agent")
    assert set(agent.allowed_tools.values_list("name", flat=True)) == DEMO_TOOLS | set(IMPORTED)
    token = out.getvalue().split("demo-agent token: ")[1].split()[0]
    assert authenticate_token(token) == agent


def test_seeding_again_with_demo_password_keeps_the_reviewers_signed_in(
    monkeypatch, settings, tmp_path
) -> None:
    # make run seeds at every start: the same DEMO_PASSWORD must not sign everyone out.
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("DEMO_PASSWORD", "demo-pass-123")
    call_command("seed_demo", stdout=StringIO())
    client = Client()
    client.post("/login/", {"username": "reviewer", "password": "demo-pass-123"})
    assert client.get("/approvals/").status_code == 200

    call_command("seed_demo", stdout=StringIO())
    assert client.get("/approvals/").status_code == 200

    monkeypatch.setenv("DEMO_PASSWORD", "another-pass-456")
    call_command("seed_demo", stdout=StringIO())
    assert client.get("/approvals/").status_code == 302, "a new password signs them out"
    assert User.objects.get(username="reviewer").check_password("another-pass-456")


def demo_calls(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``manage.py demo_calls`` in a process of its own, its var/ the test's."""
    (tmp_path / "demo_agent_token").write_text("cst_demo_token_for_the_test")
    return subprocess.run(
        [sys.executable, "manage.py", "demo_calls", *arguments], cwd=ROOT,
        env={**os.environ, "COUNTERSIGN_VAR_DIR": str(tmp_path), "SANDBOX_ENABLED": "1"},
        capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("wait", ["nan", "-5", "soon"])
def test_demo_calls_refuses_a_wait_that_is_no_time(tmp_path: Path, wait: str) -> None:
    """--wait nan waited for ever for a server that was not there; --wait -5 gave up at
    once and exited 0."""
    run = demo_calls(tmp_path, "--url", f"http://127.0.0.1:{free_port()}", "--wait", wait)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "argument --wait" in run.stderr and "Traceback" not in run.stderr


def test_demo_calls_fails_when_the_server_never_comes_up(tmp_path: Path) -> None:
    """It said so, then exited 0: a script that runs it could not tell nothing was sent."""
    url = f"http://127.0.0.1:{free_port()}"
    run = demo_calls(tmp_path, "--url", url, "--wait", "0")
    assert run.returncode == 1, run.stdout + run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last == f"CommandError: {url} did not come up within 0 s: no demo call was sent."
