"""Login throttling: 20 wrong passwords lock the account (and the address) for a while."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from audit.models import AuditEvent
from tests.conftest import World

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def fail(client: Client, username: str, times: int, **extra: str) -> None:
    for _ in range(times):
        response = client.post("/login/", {"username": username, "password": "wrong"}, **extra)
        assert response.status_code in {200, 429}


def test_twenty_wrong_passwords_refuse_the_right_one_and_say_why(world: World) -> None:
    client = Client()
    fail(client, "bob", 19)
    assert not AuditEvent.objects.filter(action="auth.locked_out").exists()
    fail(client, "bob", 1)

    response = client.post("/login/", {"username": "bob", "password": "pw-bob"})

    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    page = response.content.decode()
    assert "Sign-in is locked after 20 failed attempts" in page
    assert "Try again in 30 minutes" in page
    lockout = AuditEvent.objects.filter(action="auth.locked_out").first()
    assert lockout is not None
    assert lockout.actor_label == "bob"
    assert lockout.outcome == "locked"
    assert lockout.data["failure_limit"] == 20
    assert lockout.data["cool_off_seconds"] == 1800


def test_the_lock_is_per_account_and_per_address(world: World) -> None:
    # Twenty failures for bob from one address lock bob everywhere ...
    fail(Client(), "bob", 20, REMOTE_ADDR="10.0.0.1")
    elsewhere = Client().post(
        "/login/", {"username": "bob", "password": "pw-bob"}, REMOTE_ADDR="10.0.0.2"
    )
    assert elsewhere.status_code == 429
    # ... and that address for everyone, while charlie elsewhere signs in.
    from_there = Client().post(
        "/login/", {"username": "charlie", "password": "pw-charlie"}, REMOTE_ADDR="10.0.0.1"
    )
    assert from_there.status_code == 429
    charlie = Client().post(
        "/login/", {"username": "charlie", "password": "pw-charlie"}, REMOTE_ADDR="10.0.0.3"
    )
    assert charlie.status_code == 302


def test_a_success_before_the_limit_starts_the_count_again(world: World) -> None:
    client = Client()
    fail(client, "bob", 15)
    assert client.post("/login/", {"username": "bob", "password": "pw-bob"}).status_code == 302
    client.post("/logout/")
    fail(client, "bob", 15)
    assert client.post("/login/", {"username": "bob", "password": "pw-bob"}).status_code == 302


def test_signing_in_to_ones_own_account_does_not_reset_the_lock_on_another(
    world: World,
) -> None:
    """Charlie guesses bob's password from one address, signing in as himself between
    rounds: the count against bob (and the address) goes on, and the lock comes."""
    for _ in range(3):
        fail(Client(), "bob", 6, REMOTE_ADDR="10.9.9.9")
        own = Client().post(
            "/login/", {"username": "charlie", "password": "pw-charlie"}, REMOTE_ADDR="10.9.9.9"
        )
        assert own.status_code == 302
    fail(Client(), "bob", 2, REMOTE_ADDR="10.9.9.9")
    right = Client().post(
        "/login/", {"username": "bob", "password": "pw-bob"}, REMOTE_ADDR="10.9.9.8"
    )
    assert right.status_code == 429, "bob's account is locked after 20 wrong passwords"
    assert AuditEvent.objects.filter(action="auth.locked_out", actor_label="bob").exists()


@override_settings(AXES_FAILURE_LIMIT=3)
def test_an_unknown_name_is_kept_only_as_a_fingerprint(world: World) -> None:
    fail(Client(), "hunter2-typed-as-a-name", 3)
    lockout = AuditEvent.objects.get(action="auth.locked_out")
    assert "hunter2" not in lockout.actor_label
    assert lockout.data["known_user"] is False


def test_a_name_longer_than_any_account_s_is_a_failed_sign_in_not_a_500(world: World) -> None:
    """Django's sign-in form does not hold the name to the account's length: axes then
    stored the attempt in a column too short for it, and the sign-in page answered 500."""
    client = Client(raise_request_exception=False)
    response = client.post("/login/", {"username": "b" * 300, "password": "wrong"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert client.post("/login/", {"username": "bob", "password": "pw-bob"}).status_code == 302


@override_settings(AXES_FAILURE_LIMIT=3)
def test_the_admin_password_change_counts_wrong_old_passwords(world: World) -> None:
    """Changing one's password in the admin asks for the old one: it is a sign-in like any
    other, counted and locked, or a stolen admin session could guess it without end (and
    then change it). (Five in one session sign it out: ``test_own_password``.)"""
    User.objects.create_user("ops", password="pw-ops-Long-9", is_staff=True)
    client = Client()
    assert (
        client.post("/login/", {"username": "ops", "password": "pw-ops-Long-9"}).status_code == 302
    )
    change = {"new_password1": "Zq-new-pass-77", "new_password2": "Zq-new-pass-77"}
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        wrong = client.post("/admin/password_change/", {"old_password": f"no-{attempt}", **change})
        assert wrong.status_code in (200, 429)
    assert AccessAttempt.objects.get(username="ops").failures_since_start == 3

    right = client.post("/admin/password_change/", {"old_password": "pw-ops-Long-9", **change})
    assert right.status_code == 429
    assert User.objects.get(username="ops").check_password("pw-ops-Long-9")


def test_a_failed_sign_in_keeps_no_password_nor_code_of_its_form(world: World) -> None:
    """Axes keeps each failed sign-in's form data (its rows, in the database until the
    cool-off ends) and masks only a field named "password": a mistyped current password on
    the account page kept the new one beside it, in plain text, and the admin's page and
    the re-authentication kept theirs and the authenticator code."""
    secrets = ["pw-bob-typo", "Zq-new-pass-77", "Zq-admin-new-88", "pw-ops-typo", "654321"]
    bob = Client()
    assert bob.post("/login/", {"username": "bob", "password": "pw-bob"}).status_code == 302
    changed = bob.post(
        "/account/password/",
        {
            "old_password": "pw-bob-typo",
            "new_password1": "Zq-new-pass-77",
            "new_password2": "Zq-new-pass-77",
        },
    )
    assert changed.status_code == 400
    reauth = bob.post("/approvals/reauthenticate/", {"password": "pw-bob-typo", "code": "654321"})
    assert reauth.status_code == 200
    User.objects.create_user("ops", password="pw-ops-Long-9", is_staff=True)
    ops = Client()
    assert ops.post("/login/", {"username": "ops", "password": "pw-ops-Long-9"}).status_code == 302
    admin_change = ops.post(
        "/admin/password_change/",
        {
            "old_password": "pw-ops-typo",
            "password1": "Zq-admin-new-88",
            "password2": "Zq-admin-new-88",
        },
    )
    assert admin_change.status_code == 200

    attempts = list(AccessAttempt.objects.values_list("username", "get_data", "post_data"))
    assert {name for name, _, _ in attempts} == {"bob", "ops"}
    kept = "\n".join(get + post for _, get, post in attempts)
    assert "old_password=" in kept and "new_password1=" in kept  # the fields, not their values
    assert [secret for secret in secrets if secret in kept] == []


def test_each_lockout_is_one_event_however_often_it_is_tried(world: World) -> None:
    """Axes says "locked out" at every attempt past the limit too (each restarts the
    cool-off): the trail had an auth.locked_out for each, as many lockouts as tries."""
    client = Client()
    fail(client, "bob", 25)  # bob's account and this address, locked by one attempt
    assert AuditEvent.objects.filter(action="auth.locked_out").count() == 1
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 25
    # From the locked address, failures under charlie's name lock his account too: a
    # lockout of its own (he is refused from everywhere now).
    fail(client, "charlie", 25)
    lockouts = AuditEvent.objects.filter(action="auth.locked_out").order_by("id")
    assert [event.actor_label for event in lockouts] == ["bob", "charlie"]
    elsewhere = Client().post(
        "/login/", {"username": "charlie", "password": "pw-charlie"}, REMOTE_ADDR="10.0.0.9"
    )
    assert elsewhere.status_code == 429
