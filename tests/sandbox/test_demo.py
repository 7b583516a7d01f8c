"""seed_demo: the demo's agent, teams and grants come through the audited services, once."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from audit.models import AuditEvent
from sandbox.demo import DEMO_TOOLS, seed_demo
from tests.conftest import events
from tools_registry import services
from tools_registry.models import Agent
from tools_registry.permissions import reviewable_tools

# The demo's two upstreams on the sandbox: the payments API and the ticketing MCP server.
IMPORTED = [
    "payments__create_refund",
    "payments__get_payment",
    "payments__get_refund_by_key",
    "tickets__close_ticket",
    "tickets__create_ticket",
    "tickets__list_tickets",
]


@pytest.mark.django_db
def test_the_demo_seed_is_audited_once_and_safe_to_rerun(settings, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    first = seed_demo()
    agent = Agent.objects.get(name="demo-agent")
    everything = sorted([*DEMO_TOOLS, *IMPORTED])
    assert sorted(agent.allowed_tools.values_list("name", flat=True)) == everything
    assert services.authenticate_token(first.agent_token) == agent
    reviewer = User.objects.get(username="reviewer")
    assert sorted(t.name for t in reviewable_tools(reviewer)) == everything
    assert not reviewable_tools(User.objects.get(username="auditor")).exists()
    team_grants = events("grant.added", data__group="reviewers")
    assert len(team_grants) == len(everything)
    assert len(events("agent.created", agent_name="demo-agent")) == 1

    trail = AuditEvent.objects.count()
    again = seed_demo()
    assert AuditEvent.objects.count() == trail, "a second seed records no change: it made none"
    assert again.agent_token == first.agent_token
    assert len(events("grant.added", data__group="reviewers")) == len(everything)
    assert len(events("tool.imported")) == len(IMPORTED), "imported once"
    assert events("agent.updated") == []
    assert len(events("token.created")) == 1
    assert Group.objects.filter(name="reviewers").count() == 1
