"""Login throttling: 20 wrong passwords lock the account (and the address) for a while."""

from __future__ import annotations

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from audit.models import AuditEvent
from tests.conftest import World


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


def test_the_admin_password_change_counts_wrong_old_passwords(world: World) -> None:
    """Changing one's password in the admin asks for the old one: it is a sign-in like any
    other, counted and locked, or a stolen admin session could guess it without end (and
    then change it)."""
    User.objects.create_user("ops", password="pw-ops-Long-9", is_staff=True)
    client = Client()
    assert (
        client.post("/login/", {"username": "ops", "password": "pw-ops-Long-9"}).status_code == 302
    )
    change = {"new_password1": "Zq-new-pass-77", "new_password2": "Zq-new-pass-77"}
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        wrong = client.post("/admin/password_change/", {"old_password": f"no-{attempt}", **change})
        assert wrong.status_code in (200, 429)
    assert AccessAttempt.objects.get(username="ops").failures_since_start == 20

    right = client.post("/admin/password_change/", {"old_password": "pw-ops-Long-9", **change})
    assert right.status_code == 429
    assert User.objects.get(username="ops").check_password("pw-ops-Long-9")
