"""A team is not deleted while a rule naming it is saved. Committed, with threads (kept apart
from test_admin_accounts.py, whose tests share one world and roll back)."""

from __future__ import annotations

from functools import partial

import pytest

from tests.accounts.test_admin_accounts import _rule_from, admin_client
from tests.conftest import World
from tests.support.uncommitted import uncommitted
from tools_registry import services as registry_services
from tools_registry.models import Tool


@pytest.mark.django_db(transaction=True)
def test_a_team_is_not_deleted_while_a_rule_naming_it_is_saved(world: World) -> None:
    """A tool admin saves a rule naming the team while another admin deletes it: the
    deletion found no rule naming it (not yet committed), and the rule was saved naming a
    team that no longer existed. The deletion now waits for the save, then refuses."""
    from django.contrib.auth.models import Group

    team = Group.objects.create(name="finance")
    tool = world.tools["send_email"]
    client, _ = admin_client()
    rule_saved = partial(
        registry_services.update_policy,
        tool=tool,
        changes={"rules": [_rule_from("finance")]},
        changed_by=None,
    )
    with uncommitted(rule_saved):
        response = client.post(
            "/admin/auth/group/",
            {"action": "delete_selected", "_selected_action": [team.pk], "post": "yes"},
        )
    assert response.status_code == 200 and "Cannot delete group" in response.content.decode()
    assert Group.objects.filter(name="finance").exists()
    assert Tool.objects.get(pk=tool.pk).rules == [_rule_from("finance")]
