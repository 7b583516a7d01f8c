"""A person changes their own password on their account page: the old one counted as a
sign-in, a code if they have an app, their other sessions signed out, audited."""

from __future__ import annotations

import time

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.test import Client, override_settings
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from tests.conftest import World
from tests.support.totp import code_for
from tests.support.uncommitted import uncommitted

NEW = {"new_password1": "Zq-new-pass-77", "new_password2": "Zq-new-pass-77"}


def signed_in(username: str, password: str) -> Client:
    client = Client()
    assert client.post("/login/", {"username": username, "password": password}).status_code == 302
    return client


def test_a_reviewer_changes_their_password_and_their_other_sessions_end(world: World) -> None:
    here, elsewhere = signed_in("bob", "pw-bob"), signed_in("bob", "pw-bob")
    page = here.get("/account/").content.decode()
    assert 'action="/account/password/"' in page and 'name="old_password"' in page

    response = here.post("/account/password/", {"old_password": "pw-bob", **NEW})

    assert response.status_code == 302 and response["Location"] == "/account/"
    world.bob.refresh_from_db()
    assert world.bob.check_password("Zq-new-pass-77")
    # This session stays signed in; the other one is signed out at its next request.
    after = here.get("/account/")
    assert after.status_code == 200 and "Your password is changed" in after.content.decode()
    assert elsewhere.get("/account/")["Location"].startswith("/login/")
    (event,) = AuditEvent.objects.filter(action="auth.password_set")
    assert (event.actor_label, event.outcome, event.data) == (
        "bob",
        "changed_by_owner",
        {"user": "bob"},
    )
    assert "Zq-new" not in str(event.data)


def test_the_new_password_must_pass_the_validators_and_match(world: World) -> None:
    client = signed_in("bob", "pw-bob")
    short = client.post(
        "/account/password/",
        {"old_password": "pw-bob", "new_password1": "x1", "new_password2": "x1"},
    )
    assert short.status_code == 400 and "too short" in short.content.decode()
    apart = client.post(
        "/account/password/",
        {
            "old_password": "pw-bob",
            "new_password1": "Zq-new-pass-77",
            "new_password2": "Zq-other-8",
        },
    )
    assert apart.status_code == 400
    world.bob.refresh_from_db()
    assert world.bob.check_password("pw-bob")
    assert not AuditEvent.objects.filter(action="auth.password_set").exists()


@override_settings(AXES_FAILURE_LIMIT=3)
def test_a_wrong_current_password_counts_as_a_failed_sign_in(world: World) -> None:
    """A stolen session must not guess the password without end, then change it."""
    client = signed_in("bob", "pw-bob")
    for attempt in range(3):
        wrong = client.post("/account/password/", {"old_password": f"no-{attempt}", **NEW})
        assert wrong.status_code in (400, 429)
    assert AccessAttempt.objects.get(username="bob").failures_since_start == 3
    assert AuditEvent.objects.filter(action="auth.login_failed", actor_label="bob").count() == 3

    right = client.post("/account/password/", {"old_password": "pw-bob", **NEW})

    assert right.status_code == 429
    world.bob.refresh_from_db()
    assert world.bob.check_password("pw-bob")


def test_a_single_sign_on_account_is_told_to_change_it_at_its_provider(world: World) -> None:
    sso = User.objects.create_user("dana")
    sso.set_unusable_password()
    sso.save()
    client = Client()
    client.force_login(sso)
    page = client.get("/account/").content.decode()
    assert "you change it there" in page and 'name="old_password"' not in page

    refused = client.post("/account/password/", {"old_password": "", **NEW})

    assert refused.status_code == 403
    sso.refresh_from_db()
    assert not sso.has_usable_password()


def test_a_password_a_superuser_chose_is_flagged_until_its_owner_changes_it(
    world: World,
) -> None:
    root = Client()
    root.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root"))
    chosen = {"password1": "Chosen-by-root-9", "password2": "Chosen-by-root-9"}
    assert root.post(f"/admin/auth/user/{world.bob.pk}/password/", chosen).status_code == 302
    client = signed_in("bob", "Chosen-by-root-9")
    assert 'id="password-chosen-by-superuser"' in client.get("/account/").content.decode()
    # Someone else's account says nothing.
    assert (
        'id="password-chosen-by-superuser"'
        not in signed_in("charlie", "pw-charlie").get("/account/").content.decode()
    )

    client.post("/account/password/", {"old_password": "Chosen-by-root-9", **NEW})

    assert 'id="password-chosen-by-superuser"' not in client.get("/account/").content.decode()


def test_an_account_a_superuser_made_with_a_password_is_flagged(world: World) -> None:
    root = Client()
    root.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root"))
    made = root.post(
        "/admin/auth/user/add/",
        {
            "username": "erin",
            "usable_password": "true",
            "password1": "Chosen-by-root-9",
            "password2": "Chosen-by-root-9",
            "sso_identity-TOTAL_FORMS": "0",
            "sso_identity-INITIAL_FORMS": "0",
        },
    )
    assert made.status_code == 302
    page = signed_in("erin", "Chosen-by-root-9").get("/account/").content.decode()
    assert 'id="password-chosen-by-superuser"' in page


def _later_code(device: TOTPDevice) -> str:
    """The app's next code (the device accepts one step of drift): the one the session was
    verified with is never accepted twice."""
    device.refresh_from_db()
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + device.step
    return f"{totp.token():06d}"


@override_settings(REQUIRE_2FA=True)
def test_with_an_app_the_change_asks_a_code_too(world: World) -> None:
    """A verified session's cookie and the password are not enough: its holder would lock
    the owner out and sign out their sessions."""
    device = TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True)
    client = signed_in("bob", "pw-bob")
    verified = client.post("/account/two-factor/verify/", {"code": code_for(device)})
    assert verified.status_code == 302
    assert 'name="code"' in client.get("/account/").content.decode()

    without = client.post("/account/password/", {"old_password": "pw-bob", **NEW, "code": ""})

    assert without.status_code == 400 and "code was not accepted" in without.content.decode()
    world.bob.refresh_from_db()
    assert world.bob.check_password("pw-bob")
    assert AuditEvent.objects.filter(
        action="auth.two_factor_failed", data__for="password_change"
    ).exists()

    device.throttle_reset()
    done = client.post(
        "/account/password/", {"old_password": "pw-bob", **NEW, "code": _later_code(device)}
    )

    assert done.status_code == 302
    world.bob.refresh_from_db()
    assert world.bob.check_password("Zq-new-pass-77")
    assert client.get("/account/").status_code == 200  # still signed in, still verified


def test_the_admin_s_change_password_page_is_audited_as_well(world: World) -> None:
    User.objects.create_user("ops", password="pw-ops-Long-9", is_staff=True)
    client = signed_in("ops", "pw-ops-Long-9")
    response = client.post("/admin/password_change/", {"old_password": "pw-ops-Long-9", **NEW})
    assert response.status_code == 302
    (event,) = AuditEvent.objects.filter(action="auth.password_set")
    assert (event.actor_label, event.outcome, event.data) == (
        "ops",
        "changed_by_owner",
        {"user": "ops"},
    )


@override_settings(REQUIRE_2FA=True)
def test_the_admin_s_page_which_asks_no_code_sends_those_with_an_app_to_the_account_page(
    world: World,
) -> None:
    ops = User.objects.create_user("ops", password="pw-ops-Long-9", is_staff=True)
    device = TOTPDevice.objects.create(user=ops, name="app", confirmed=True)
    client = signed_in("ops", "pw-ops-Long-9")
    assert client.post("/account/two-factor/verify/", {"code": code_for(device)}).status_code == 302

    page = client.get("/admin/password_change/")
    taken = client.post("/admin/password_change/", {"old_password": "pw-ops-Long-9", **NEW})

    assert page.status_code == 302 and page["Location"] == "/account/#password"
    assert taken.status_code == 302 and taken["Location"] == "/account/#password"
    ops.refresh_from_db()
    assert ops.check_password("pw-ops-Long-9")
    assert not AuditEvent.objects.filter(action="auth.password_set").exists()


@pytest.mark.django_db(transaction=True)
def test_a_password_changed_as_the_account_is_deactivated_does_not_activate_it_again(
    world: World,
) -> None:
    """Bob changes his password as an admin deactivates him (he left). The change saved the
    account's whole row as read when the request began, before the deactivation committed:
    bob was active again. Only the password is written."""
    here = signed_in("bob", "pw-bob")
    with uncommitted(lambda: User.objects.filter(pk=world.bob.pk).update(is_active=False)):
        response = here.post("/account/password/", {"old_password": "pw-bob", **NEW})
    assert response.status_code == 302
    bob = User.objects.get(pk=world.bob.pk)
    assert (bob.is_active, bob.check_password("Zq-new-pass-77")) == (False, True)


def _signed_out(client: Client) -> bool:
    return client.get("/account/")["Location"].startswith("/login/")


def test_five_wrong_current_passwords_sign_the_session_out(world: World) -> None:
    """The page had no limit of its own: a stolen session guessed the password on it up to
    the account's lockout (LOGIN_FAILURE_LIMIT, 20), which then locked its owner out too.
    Five wrong ones sign the session out, as at a re-authentication."""
    client = signed_in("bob", "pw-bob")
    for attempt in range(4):
        wrong = client.post("/account/password/", {"old_password": f"no-{attempt}", **NEW})
        assert wrong.status_code == 400
    fifth = client.post("/account/password/", {"old_password": "no-4", **NEW})

    assert fifth.status_code == 302 and fifth["Location"].startswith("/login")
    assert _signed_out(client)
    assert AccessAttempt.objects.get(username="bob").failures_since_start == 5
    assert signed_in("bob", "pw-bob").get("/account/").status_code == 200  # not locked out


def test_the_change_of_password_and_re_authentication_share_one_count(world: World) -> None:
    """Counted apart, a stolen session had five guesses at each page."""
    client = signed_in("bob", "pw-bob")
    for attempt in range(3):
        reauth = client.post("/approvals/reauthenticate/", {"password": f"no-{attempt}"})
        assert reauth.status_code == 200
    assert client.post("/account/password/", {"old_password": "no-3", **NEW}).status_code == 400
    fifth = client.post("/account/password/", {"old_password": "no-4", **NEW})

    assert fifth.status_code == 302 and _signed_out(client)


def test_the_admin_s_change_password_page_signs_out_after_five_wrong_ones(world: World) -> None:
    User.objects.create_user("ops", password="pw-ops-Long-9", is_staff=True)
    client = signed_in("ops", "pw-ops-Long-9")
    for attempt in range(4):
        wrong = client.post("/admin/password_change/", {"old_password": f"no-{attempt}", **NEW})
        assert wrong.status_code == 200
    fifth = client.post("/admin/password_change/", {"old_password": "no-4", **NEW})

    assert fifth.status_code == 302 and fifth["Location"].startswith("/login")
    assert _signed_out(client)
    assert AccessAttempt.objects.get(username="ops").failures_since_start == 5


def test_new_passwords_refused_with_the_right_current_one_are_no_guesses(world: World) -> None:
    """The person who knows their password, trying new ones the validators refuse, is not
    signed out at the fifth try."""
    client = signed_in("bob", "pw-bob")
    short = {"new_password1": "x1", "new_password2": "x1"}
    for _ in range(7):
        refused = client.post("/account/password/", {"old_password": "pw-bob", **short})
        assert refused.status_code == 400 and "too short" in refused.content.decode()
    done = client.post("/account/password/", {"old_password": "pw-bob", **NEW})

    assert done.status_code == 302 and done["Location"] == "/account/"
    world.bob.refresh_from_db()
    assert world.bob.check_password("Zq-new-pass-77")


def test_while_the_caches_redis_is_down_no_current_password_is_checked(world: World) -> None:
    """Attempts are counted in Redis before the password is checked: while it is away the
    page says so (503) and checks nothing, rather than checking uncounted."""
    client = signed_in("bob", "pw-bob")
    down = {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    with override_settings(CACHES={"default": down}):
        caches.close_all()
        try:
            response = client.post("/account/password/", {"old_password": "pw-bob", **NEW})
        finally:
            caches.close_all()

    assert response.status_code == 503
    assert "Passwords cannot be checked for a moment" in response.content.decode()
    world.bob.refresh_from_db()
    assert world.bob.check_password("pw-bob")
    assert not AccessAttempt.objects.exists()
    assert client.post("/account/password/", {"old_password": "pw-bob", **NEW}).status_code == 302
