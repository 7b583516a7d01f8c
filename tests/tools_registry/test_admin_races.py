"""Admin pages saved twice at once, or against a change made meanwhile: a form error, never a
500. Committed, with threads (kept apart from test_admin.py, whose tests share one world and
roll back)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.conftest import World, events
from tests.support.uncommitted import uncommitted
from tests.tools_registry.conftest import admin_form_data
from tests.tools_registry.test_admin import _change_url, name_taken_uncommitted
from tools_registry.models import Agent

pytestmark = pytest.mark.usefixtures("world")


@pytest.mark.django_db(transaction=True)
def test_an_agent_added_twice_at_once_is_a_form_error_not_a_500(
    world: World, admin_client: Client
) -> None:
    """Save clicked twice: both saves passed the form's unique check before either
    committed, and the second's INSERT failed with IntegrityError (a 500)."""
    with name_taken_uncommitted(Agent, name="billing-bot", owner=world.alice):
        response = admin_client.post(
            "/admin/tools_registry/agent/add/",
            {
                "name": "billing-bot",
                "owner": world.alice.pk,
                "max_rounds_per_session": 10,
                "enabled": "on",
                "tokens-TOTAL_FORMS": 0,
                "tokens-INITIAL_FORMS": 0,
            },
        )
    assert response.status_code == 200
    assert "already exists" in str(response.context["adminform"].form.errors["name"])
    assert Agent.objects.filter(name="billing-bot").count() == 1
    assert events("agent.created", agent_name="billing-bot") == []


@pytest.mark.django_db(transaction=True)
def test_a_team_added_twice_at_once_is_a_form_error_not_a_500(admin_client: Client) -> None:
    with name_taken_uncommitted(Group, name="billing"):
        response = admin_client.post("/admin/auth/group/add/", {"name": "billing"})
    assert response.status_code == 200
    assert "already exists" in str(response.context["adminform"].form.errors["name"])


@pytest.mark.django_db(transaction=True)
def test_a_rule_naming_a_team_deleted_meanwhile_is_a_form_error(
    world: World, admin_client: Client
) -> None:
    """Another admin deletes the team while this one saves a rule naming it: both checks
    passed before either committed, and the rule was saved naming a team that no longer
    existed (its calls could only expire). The save now waits for the deletion, then says
    the team is gone."""
    Group.objects.create(name="finance")
    tool = world.tools["send_email"]
    data = admin_form_data(admin_client.get(_change_url(tool)))
    rule = {"when": "true", "then": "require", "approvals": 1, "team": "finance"}
    data.update(rules=json.dumps([rule]))
    with uncommitted(lambda: Group.objects.filter(name="finance").delete()):
        response = admin_client.post(_change_url(tool), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors.as_data()
    assert [e.message for e in errors["rules"]] == ["Rule 1: there is no team named 'finance'."]
    tool.refresh_from_db()
    assert (tool.rules, tool.policy_version) == ([], 1)
