"""Management commands people run by hand: seed_demo, create_agent_token, verify_audit."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection

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
    assert set(agent.allowed_tools.values_list("name", flat=True)) == DEMO_TOOLS
    token = out.getvalue().split("demo-agent token: ")[1].split()[0]
    assert authenticate_token(token) == agent


def test_create_agent_token_prints_the_token_alone_on_its_last_line(world) -> None:
    out, err = StringIO(), StringIO()
    call_command("create_agent_token", "support-bot", stdout=out, stderr=err)
    token = out.getvalue().strip().splitlines()[-1]
    assert token.startswith("cst_") and " " not in token
    assert authenticate_token(token) == world.agent
    secret = token.split("_", 2)[2]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM tools_registry_agenttoken WHERE secret_hash LIKE %s OR prefix LIKE %s",
            [f"%{secret}%", f"%{secret}%"],
        )
        assert cursor.fetchone()[0] == 0, "only a hash of the secret is stored"


def test_create_agent_token_refuses_an_unknown_agent(world) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No agent named"):
        call_command("create_agent_token", "nobody", stdout=StringIO())
