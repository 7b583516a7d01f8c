"""Re-entering the password: stamps the session, is audited, locks out guessers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.core.cache import caches
from django.test import Client, override_settings
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals import reauth
from audit.models import AuditEvent
from tests.approvals.conftest import make_call, shown_state
from tests.conftest import World
from tests.support.totp import code_for

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def stale_client(world: World, device: TOTPDevice | None = None) -> Client:
    client = Client()
    client.force_login(world.bob)
    session = client.session
    session[reauth.SESSION_KEY] = (timezone.now() - timedelta(hours=2)).timestamp()
    if device is not None:
        # Signed in long ago with its code (a session with a device is held until then).
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def test_a_sign_in_counts_as_a_fresh_authentication(world: World) -> None:
    client = Client()
    response = client.post("/login/", {"username": "bob", "password": "pw-bob"})
    assert response.status_code == 302
    stamped = client.session[reauth.SESSION_KEY]
    assert abs(stamped - timezone.now().timestamp()) < 5


def test_the_right_password_refreshes_the_session_and_returns_to_the_call(world: World) -> None:
    call = make_call(world, "delete_customer")
    client = stale_client(world)
    old_key = client.session.session_key
    target = f"/approvals/{call.pk}/"
    page = client.get(f"/approvals/reauthenticate/?next={target}")
    assert page.status_code == 200 and f'value="{target}"' in page.content.decode()

    response = client.post("/approvals/reauthenticate/", {"password": "pw-bob", "next": target})
    assert response.status_code == 302
    assert response["Location"] == target
    assert client.session.session_key != old_key
    assert 'data-confirm-for="cus_0003"' in client.get(target).content.decode()
    assert AuditEvent.objects.filter(action="reviewer.reauthenticated", actor_label="bob").exists()


def test_a_foreign_next_url_is_ignored(world: World) -> None:
    client = stale_client(world)
    response = client.post(
        "/approvals/reauthenticate/", {"password": "pw-bob", "next": "https://evil.example/x"}
    )
    assert response["Location"] == "/approvals/"


def test_a_next_that_is_no_path_is_a_url_not_a_view_name(world: World) -> None:
    # redirect() looked a bare word up as a view's name: next=abc was a 500, after the
    # password was accepted. A next is a URL, relative to this page like any link's.
    client = stale_client(world)
    response = client.post("/approvals/reauthenticate/", {"password": "pw-bob", "next": "abc"})
    assert response.status_code == 302 and response["Location"] == "abc"


def test_wrong_passwords_are_audited_and_five_sign_the_session_out(world: World) -> None:
    client = stale_client(world)
    for _ in range(4):
        response = client.post("/approvals/reauthenticate/", {"password": "guess"})
        assert response.status_code == 200
        assert "That is not your password." in response.content.decode()
        assert reauth.authenticated_at(_request_for(client)) < timezone.now() - timedelta(hours=1)
    response = client.post("/approvals/reauthenticate/", {"password": "guess"})
    assert response.status_code == 302 and response["Location"].startswith("/login")
    assert client.get("/approvals/").status_code == 302  # signed out
    failures = AuditEvent.objects.filter(action="reviewer.reauthentication_failed")
    assert failures.count() == 5
    assert "guess" not in str(list(failures.values_list("data", flat=True)))


def _request_for(client: Client):  # type: ignore[no-untyped-def]
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.session = client.session
    return request


def test_a_reviewer_with_a_second_factor_gives_a_fresh_code_too(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True)
    call = make_call(world, "delete_customer")
    client = stale_client(world, device)
    target = f"/approvals/{call.pk}/"
    page = client.get(f"/approvals/reauthenticate/?next={target}").content.decode()
    assert 'name="code"' in page

    no_code = client.post("/approvals/reauthenticate/", {"password": "pw-bob", "next": target})
    assert no_code.status_code == 200
    assert "That code was not accepted" in no_code.content.decode()
    assert AuditEvent.objects.filter(
        action="reviewer.reauthentication_failed", outcome="wrong_code"
    ).exists()

    TOTPDevice.objects.filter(pk=device.pk).update(throttling_failure_count=0)
    ok = client.post(
        "/approvals/reauthenticate/",
        {"password": "pw-bob", "code": code_for(device), "next": target},
    )
    assert ok.status_code == 302 and ok["Location"] == target
    assert AuditEvent.objects.filter(
        action="auth.two_factor_verified", data__for="reauthentication"
    ).exists()


def test_a_wrong_password_does_not_spend_a_code(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True)
    client = stale_client(world, device)
    wrong = client.post("/approvals/reauthenticate/", {"password": "guess", "code": "123456"})
    assert "That is not your password." in wrong.content.decode()
    device.refresh_from_db()
    assert device.throttling_failure_count == 0


def test_a_person_without_a_password_reauthenticates_through_single_sign_on(
    world: World, settings
) -> None:
    settings.OIDC_ENABLED = True
    world.bob.set_unusable_password()
    world.bob.save()
    client = stale_client(world)
    page = client.get("/approvals/reauthenticate/?next=/approvals/").content.decode()
    assert 'id="sso-reauth"' in page and "/oidc/authenticate/?next=%2Fapprovals%2F" in page
    assert 'name="password"' not in page


def test_signing_in_again_in_a_verified_session_asks_for_the_code_again(world: World) -> None:
    """The re-authentication asks a person with an app for a fresh code as well as their
    password. Signing in again on the sign-in page, in the session the app had verified (its
    cookie stolen, and the password), kept the session verified and made it as recent as a
    re-authentication: a destructive approval with no code at all. A sign-in is the
    password; the code is asked again after it."""
    device = TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True)
    call = make_call(world, "delete_customer")
    client = stale_client(world, device)
    assert client.get("/approvals/").status_code == 200  # a verified session
    form = {
        "verdict": "approve",
        "arguments_hash": call.arguments_hash,
        "state_hash": shown_state(client, call),  # the page, opened in that session
        "confirmation": "cus_0003",
    }

    again = client.post("/login/", {"username": "bob", "password": "pw-bob"})
    assert again.status_code == 302
    approve = client.post(f"/approvals/{call.pk}/decide/", form)
    assert approve.status_code == 302
    assert approve["Location"].startswith("/account/two-factor/")
    assert call.decisions.count() == 0

    ok = client.post("/account/two-factor/verify/", {"code": code_for(device)})
    assert ok.status_code == 302
    approve = client.post(f"/approvals/{call.pk}/decide/", form, HTTP_HX_REQUEST="true")
    assert "1 of 2 approvals" in approve.content.decode()


def test_while_the_caches_redis_is_down_no_password_is_checked_uncounted(world: World) -> None:
    """The attempts are counted in the cache (Redis), before the password is checked: while
    it is down the page says so (503), checks nothing and records no attempt, rather than a
    500, or a check no count would ever stop."""
    client = stale_client(world)
    down = {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    with override_settings(CACHES={"default": down}):
        caches.close_all()
        try:
            response = client.post("/approvals/reauthenticate/", {"password": "pw-bob"})
        finally:
            caches.close_all()
    assert response.status_code == 503
    assert "Passwords cannot be checked for a moment" in response.content.decode()
    assert reauth.authenticated_at(_request_for(client)) < timezone.now() - timedelta(hours=1)
    assert not AuditEvent.objects.filter(action__startswith="reviewer.reauth").exists()
    response = client.post("/approvals/reauthenticate/", {"password": "pw-bob"})
    assert response.status_code == 302  # Redis back: the same password passes
