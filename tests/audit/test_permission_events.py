"""Model-wide permissions decide who reads the trail or issues tokens: every change is audited."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User

from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def changes() -> list[tuple[str, dict]]:
    return [
        (e.outcome, e.data)
        for e in AuditEvent.objects.filter(action="auth.permissions_changed").order_by("id")
    ]


def test_a_permission_given_to_and_taken_from_a_person_is_audited() -> None:
    erin = User.objects.create_user("erin")
    read_trail = Permission.objects.get(codename="view_auditevent")
    erin.user_permissions.add(read_trail)
    erin.user_permissions.remove(read_trail)
    assert changes() == [
        ("add", {"users": ["erin"], "permissions": ["audit.view_auditevent"]}),
        ("remove", {"users": ["erin"], "permissions": ["audit.view_auditevent"]}),
    ]


def test_a_permission_given_to_a_team_from_either_side_is_audited() -> None:
    auditors = Group.objects.create(name="auditors")
    issue_tokens = Permission.objects.get(codename="add_agenttoken")
    auditors.permissions.add(issue_tokens)
    issue_tokens.group_set.remove(auditors)
    assert changes() == [
        ("add", {"groups": ["auditors"], "permissions": ["tools_registry.add_agenttoken"]}),
        ("remove", {"groups": ["auditors"], "permissions": ["tools_registry.add_agenttoken"]}),
    ]
