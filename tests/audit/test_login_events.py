"""Sign-ins to the web UI are audited; a password never is."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client

from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def erin() -> User:
    return User.objects.create_user("erin", "erin@example.com", "correct-horse-battery")


def _trail_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM audit_auditevent AS t")
        return "\n".join(row[0] for row in cursor.fetchall())


def test_a_login_and_a_logout_are_recorded_with_the_address(erin: User, client: Client) -> None:
    response = client.post(
        "/login/", {"username": "erin", "password": "correct-horse-battery"}, REMOTE_ADDR="10.1.2.3"
    )
    assert response.status_code == 302
    client.post("/logout/")
    login, logout = AuditEvent.objects.filter(action__startswith="auth.").order_by("id")
    assert (login.action, login.actor_label, login.actor_id) == ("auth.login", "erin", str(erin.pk))
    assert login.data["ip"] == "10.1.2.3"
    assert logout.action == "auth.logout"
    assert "correct-horse-battery" not in _trail_text()


def test_a_failed_login_names_a_real_account_but_never_the_password(
    erin: User, client: Client
) -> None:
    client.post("/login/", {"username": "erin", "password": "wrong-guess-123"})
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert (event.actor_label, event.actor_id, event.outcome) == ("erin", "", "failed")
    assert event.data["known_user"] is True
    assert "wrong-guess-123" not in _trail_text()


def test_a_password_typed_as_the_name_is_kept_only_as_a_fingerprint(
    erin: User, client: Client
) -> None:
    for _ in range(2):
        client.post("/login/", {"username": "correct-horse-battery", "password": "x"})
    first, second = AuditEvent.objects.filter(action="auth.login_failed")
    assert first.actor_label.startswith("[masked:username:")
    assert first.actor_label == second.actor_label, "repeated attempts still correlate"
    assert "correct-horse-battery" not in _trail_text()


def test_joining_a_team_is_recorded(erin: User) -> None:
    auditors = Group.objects.create(name="auditors")
    erin.groups.add(auditors)
    auditors.user_set.remove(erin)
    added, removed = AuditEvent.objects.filter(action="auth.groups_changed").order_by("id")
    assert (added.outcome, added.data) == ("add", {"users": ["erin"], "groups": ["auditors"]})
    assert (removed.outcome, removed.data) == (
        "remove",
        {"users": ["erin"], "groups": ["auditors"]},
    )
