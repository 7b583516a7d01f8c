"""The second factor: enrolled from the person's own page, required of reviewers and admins
with REQUIRE_2FA=1, asked again before a destructive approval."""

from __future__ import annotations

import threading
import time
from typing import Any
from unittest import mock

from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client, override_settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import two_factor
from approvals.models import Status
from audit.models import AuditEvent
from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support.totp import code_for

required = override_settings(REQUIRE_2FA=True)


def signed_in(username: str, password: str) -> Client:
    client = Client()
    assert client.post("/login/", {"username": username, "password": password}).status_code == 302
    return client


def enrolled(world: World) -> TOTPDevice:
    return TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True)


@required
def test_a_reviewer_cannot_approve_without_a_code(world: World) -> None:
    call = make_call(world)
    client = signed_in("bob", "pw-bob")

    queue = client.get("/approvals/")
    assert queue.status_code == 302
    assert queue["Location"] == "/account/two-factor/?next=%2Fapprovals%2F"
    refused = client.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash},
    )
    assert refused.status_code == 302 and "/account/two-factor/" in refused["Location"]
    htmx = client.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash},
        HTTP_HX_REQUEST="true",
    )
    assert htmx.status_code == 204 and htmx["HX-Redirect"].startswith("/account/two-factor/")
    call.refresh_from_db()
    assert call.status == Status.PENDING


@required
def test_enrolling_from_the_own_page_then_approving(world: World) -> None:
    call = make_call(world)
    client = signed_in("bob", "pw-bob")
    page = client.get("/account/two-factor/?next=/approvals/")
    assert "Set up an authenticator app" in page.content.decode()

    client.post("/account/two-factor/enrol/", {"next": "/approvals/"})
    device = TOTPDevice.objects.get(user=world.bob)
    assert device.confirmed is False
    setup = client.get("/account/two-factor/").content.decode()
    assert 'src="data:image/svg+xml' in setup and 'id="totp-secret"' in setup

    wrong = client.post("/account/two-factor/confirm/", {"code": "000000", "next": "/approvals/"})
    assert wrong.status_code == 400
    # django-otp's throttle: a wrong code makes the next try wait a moment.
    TOTPDevice.objects.filter(pk=device.pk).update(throttling_failure_count=0)
    confirmed = client.post(
        "/account/two-factor/confirm/", {"code": code_for(device), "next": "/approvals/"}
    )
    assert confirmed.status_code == 302 and confirmed["Location"] == "/approvals/"
    device.refresh_from_db()
    assert device.confirmed is True
    assert AuditEvent.objects.filter(action="auth.two_factor_enrolled", actor_label="bob").exists()
    assert AuditEvent.objects.filter(action="auth.two_factor_failed", actor_label="bob").exists()

    assert client.get("/approvals/").status_code == 200
    client.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash},
    )
    call.refresh_from_db()
    assert call.status != Status.PENDING


@required
def test_a_later_sign_in_asks_for_the_code(world: World) -> None:
    device = enrolled(world)
    client = signed_in("bob", "pw-bob")
    page = client.get("/account/two-factor/")
    assert "Enter your code" in page.content.decode()
    assert client.post("/account/two-factor/verify/", {"code": "123456"}).status_code == 400
    # django-otp's throttle: a wrong code makes the next try wait a moment.
    TOTPDevice.objects.filter(pk=device.pk).update(throttling_failure_count=0)
    ok = client.post(
        "/account/two-factor/verify/", {"code": code_for(device), "next": "/approvals/"}
    )
    assert ok.status_code == 302 and ok["Location"] == "/approvals/"
    assert client.get("/approvals/").status_code == 200
    assert AuditEvent.objects.filter(action="auth.two_factor_verified", actor_label="bob").exists()


@required
def test_a_next_that_is_no_path_is_a_url_not_a_view_name(world: World) -> None:
    # redirect() looked a bare word up as a view's name: next=abc was a 500 once the code
    # was right, at the sign-in's verify and at the enrolment's confirm.
    device = enrolled(world)
    client = signed_in("bob", "pw-bob")
    ok = client.post("/account/two-factor/verify/", {"code": code_for(device), "next": "abc"})
    assert ok.status_code == 302 and ok["Location"] == "abc"
    newcomer = signed_in("charlie", "pw-charlie")
    newcomer.post("/account/two-factor/enrol/", {"next": "abc"})
    pending = TOTPDevice.objects.get(user=world.charlie)
    done = newcomer.post("/account/two-factor/confirm/", {"code": code_for(pending), "next": "abc"})
    assert done.status_code == 302 and done["Location"] == "abc"


@required
def test_a_password_alone_never_replaces_the_second_factor(world: World) -> None:
    """Whoever holds only the password cannot swap in an app of their own: neither by
    starting a new enrolment nor by finishing one started earlier."""
    call = make_call(world)
    device = enrolled(world)
    # An unfinished enrolment left from a verified session of the owner's.
    earlier = TOTPDevice.objects.create(user=world.bob, name="new", confirmed=False)
    client = signed_in("bob", "pw-bob")

    page = client.get("/account/two-factor/").content.decode()
    assert "Enter your code" in page and 'id="totp-secret"' not in page
    refused = client.post("/account/two-factor/enrol/", {"next": "/approvals/"})
    assert refused.status_code == 403
    assert "first enter a code from the one you have" in refused.content.decode()
    assert 'id="totp-secret"' not in refused.content.decode()
    assert list(TOTPDevice.objects.filter(user=world.bob).order_by("pk")) == [device, earlier]
    finish = client.post(
        "/account/two-factor/confirm/", {"code": code_for(earlier), "next": "/approvals/"}
    )
    assert finish.status_code == 403

    earlier.refresh_from_db()
    assert earlier.confirmed is False and TOTPDevice.objects.filter(pk=device.pk).exists()
    assert client.get("/approvals/").status_code == 302  # still held at the second factor
    client.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash},
    )
    call.refresh_from_db()
    assert call.status == Status.PENDING
    refusals = AuditEvent.objects.filter(
        action="auth.two_factor_failed", actor_label="bob", outcome="replacement_refused"
    )
    assert refusals.count() == 2


def test_a_password_alone_never_replaces_it_for_those_not_required_either(world: World) -> None:
    TOTPDevice.objects.create(user=world.charlie, name="app", confirmed=True)
    client = signed_in("charlie", "pw-charlie")
    # Held at the code like anyone who turned a second factor on, never offered a new one.
    assert client.get("/account/")["Location"] == "/account/two-factor/?next=%2Faccount%2F"
    page = client.get("/account/two-factor/").content.decode()
    assert "Enter your code" in page and 'id="totp-secret"' not in page
    assert client.post("/account/two-factor/enrol/").status_code == 403
    assert TOTPDevice.objects.filter(user=world.charlie, confirmed=False).count() == 0


@required
def test_a_verified_session_replaces_the_app(world: World) -> None:
    old = enrolled(world)
    client = signed_in("bob", "pw-bob")
    client.post("/account/two-factor/verify/", {"code": code_for(old)})
    assert "Replace the authenticator app" in client.get("/account/").content.decode()

    assert client.post("/account/two-factor/enrol/", {"next": "/account/"}).status_code == 302
    new = TOTPDevice.objects.get(user=world.bob, confirmed=False)
    assert 'id="totp-secret"' in client.get("/account/two-factor/").content.decode()
    done = client.post("/account/two-factor/confirm/", {"code": code_for(new), "next": "/account/"})
    assert done.status_code == 302 and done["Location"] == "/account/"
    assert list(TOTPDevice.objects.filter(user=world.bob)) == [new]
    new.refresh_from_db()
    assert new.confirmed is True
    enrolment = AuditEvent.objects.get(action="auth.two_factor_enrolled", actor_label="bob")
    assert enrolment.data["replaced_devices"] == 1


@required
def test_a_session_verified_long_ago_enters_a_code_again_to_replace_the_app(
    world: World,
) -> None:
    """A verified session's cookie, stolen hours later, replaced the owner's app with its
    holder's: the owner was locked out of their own second factor. Replacing it takes a
    code entered within the last FRESH_CODE_SECONDS."""
    old = enrolled(world)
    client = signed_in("bob", "pw-bob")
    client.post("/account/two-factor/verify/", {"code": code_for(old)})
    session = client.session
    session[two_factor.PASSED_AT_KEY] -= two_factor.FRESH_CODE_SECONDS + 60
    session.save()

    assert client.get("/approvals/").status_code == 200, "still a verified session"
    assert "Replace the authenticator app" not in client.get("/account/").content.decode()
    refused = client.post("/account/two-factor/enrol/", {"next": "/account/"})
    assert refused.status_code == 403
    assert not TOTPDevice.objects.filter(user=world.bob, confirmed=False).exists()

    TOTPDevice.objects.filter(pk=old.pk).update(last_t=-1)  # the app's next code
    client.post("/account/two-factor/verify/", {"code": code_for(old)})
    assert client.post("/account/two-factor/enrol/", {"next": "/account/"}).status_code == 302


@required
def test_a_session_signed_in_long_ago_sets_up_no_app_once_an_admin_deleted_the_lost_one(
    world: World,
) -> None:
    """An admin deletes a lost app so that its owner sets up a new one at their next
    sign-in: the cookie of a session the app had verified (stolen with the phone) set up its
    holder's app instead, and the owner, signing in anew, was asked for that app's codes.
    A first app takes a sign-in within FRESH_CODE_SECONDS, in that session."""
    old = enrolled(world)
    stolen = signed_in("bob", "pw-bob")
    stolen.post("/account/two-factor/verify/", {"code": code_for(old)})
    session = stolen.session
    session[two_factor.SIGNED_IN_AT_KEY] -= two_factor.FRESH_CODE_SECONDS + 60
    session[two_factor.PASSED_AT_KEY] -= two_factor.FRESH_CODE_SECONDS + 60
    session.save()
    old.delete()  # the admin's recovery of a lost app

    page = stolen.get("/account/two-factor/").content.decode()
    assert "sign out and sign in again" in page and "/account/two-factor/enrol/" not in page
    refused = stolen.post("/account/two-factor/enrol/")
    assert refused.status_code == 403 and "sign out and sign in again" in refused.content.decode()
    assert not TOTPDevice.objects.filter(user=world.bob).exists()
    assert AuditEvent.objects.filter(
        action="auth.two_factor_failed", actor_label="bob", outcome="sign_in_too_old"
    ).exists()

    # The owner's new sign-in sets one up; the old session neither sees nor finishes it.
    owner = signed_in("bob", "pw-bob")
    assert owner.post("/account/two-factor/enrol/").status_code == 302
    pending = TOTPDevice.objects.get(user=world.bob, confirmed=False)
    assert 'id="totp-secret"' not in stolen.get("/account/two-factor/").content.decode()
    finish = stolen.post("/account/two-factor/confirm/", {"code": code_for(pending)})
    assert finish.status_code == 403
    done = owner.post("/account/two-factor/confirm/", {"code": code_for(pending)})
    assert done.status_code == 302
    pending.refresh_from_db()
    assert pending.confirmed is True


@required
def test_an_app_being_set_up_is_shown_and_confirmed_only_in_the_session_that_set_it_up(
    world: World,
) -> None:
    """Bob sets up his first app. Whoever has his password signs in beside him, as fresh a
    sign-in as his: the page showed them the new app's secret and QR code, and once bob
    confirmed it they passed his second factor for good, unseen (and could confirm it
    themselves). Only the session that set it up sees or confirms it."""
    owner = signed_in("bob", "pw-bob")
    assert owner.post("/account/two-factor/enrol/").status_code == 302
    pending = TOTPDevice.objects.get(user=world.bob, confirmed=False)
    secret = two_factor.secret_for_typing(pending)
    assert secret in owner.get("/account/two-factor/").content.decode()
    other = signed_in("bob", "pw-bob")

    page = other.get("/account/two-factor/").content.decode()
    assert secret not in page and 'id="totp-secret"' not in page and "data:image" not in page
    refused = other.post("/account/two-factor/confirm/", {"code": code_for(pending)})
    assert refused.status_code == 400
    pending.refresh_from_db()
    assert pending.confirmed is False
    assert other.get("/approvals/").status_code == 302  # held at the second factor

    done = owner.post("/account/two-factor/confirm/", {"code": code_for(pending)})
    assert done.status_code == 302
    pending.refresh_from_db()
    assert pending.confirmed is True
    assert owner.get("/approvals/").status_code == 200
    assert other.get("/approvals/").status_code == 302
    # Set up there, once confirmed it is no longer the session's to show.
    assert secret not in owner.get("/account/two-factor/").content.decode()


@required
def test_a_session_verified_long_ago_cannot_delete_its_own_app_in_the_admin_either(
    world: World,
) -> None:
    """The admin's authenticator apps page is for someone else's lost app: a stolen
    session of whoever may delete apps deleted its owner's own, then, with no app left,
    enrolled one of its holder's without a code."""
    old = enrolled(world)
    world.bob.is_staff = True
    world.bob.save()
    world.bob.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_totpdevice", "delete_totpdevice"])
    )
    client = signed_in("bob", "pw-bob")
    client.post("/account/two-factor/verify/", {"code": code_for(old)})
    session = client.session
    session[two_factor.PASSED_AT_KEY] -= two_factor.FRESH_CODE_SECONDS + 60
    session.save()

    deleted = client.post(f"/admin/otp_totp/totpdevice/{old.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    client.post(
        "/admin/otp_totp/totpdevice/",
        {"action": "delete_selected", "_selected_action": [old.pk], "post": "yes"},
    )
    assert TOTPDevice.objects.filter(pk=old.pk, confirmed=True).exists()
    assert client.post("/account/two-factor/enrol/", {"next": "/account/"}).status_code == 403
    assert not AuditEvent.objects.filter(action="auth.two_factor_removed").exists()
    # Someone else's lost app is still theirs to delete.
    theirs = TOTPDevice.objects.create(user=world.charlie, name="app", confirmed=True)
    client.post(f"/admin/otp_totp/totpdevice/{theirs.pk}/delete/", {"post": "yes"})
    assert not TOTPDevice.objects.filter(pk=theirs.pk).exists()


@required
def test_outsiders_are_not_held(world: World) -> None:
    client = signed_in("charlie", "pw-charlie")
    assert client.get("/account/").status_code == 200
    assert "two-factor" not in client.get("/approvals/").get("Location", "")


@override_settings(REQUIRE_2FA=False)
def test_without_the_setting_nobody_is_held(world: World) -> None:
    client = signed_in("bob", "pw-bob")
    assert client.get("/approvals/").status_code == 200


@required
def test_admins_are_held_too(world: World) -> None:
    world.charlie.is_staff = True
    world.charlie.save()
    client = signed_in("charlie", "pw-charlie")
    response = client.get("/admin/")
    assert response.status_code == 302 and "/account/two-factor/" in response["Location"]


def test_the_admin_sign_in_is_the_one_sign_in_page(world: World) -> None:
    response = Client().get("/admin/login/?next=/admin/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/admin/"


@override_settings(REQUIRE_2FA=False)
def test_a_second_factor_someone_turned_on_is_asked_at_their_sign_in(world: World) -> None:
    """The page offers to "add a code from an authenticator app to your sign-in" to anyone,
    and the account page then says it is on: an auditor who turned it on (or a reviewer,
    where REQUIRE_2FA is off) must not be let in by the password alone."""
    auditor = world.charlie
    auditor.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    device = TOTPDevice.objects.create(user=auditor, name="app", confirmed=True)
    client = signed_in("charlie", "pw-charlie")

    held = client.get("/audit/")
    assert held.status_code == 302
    assert held["Location"] == "/account/two-factor/?next=%2Faudit%2F"
    assert client.get("/audit/export.csv").status_code == 302

    ok = client.post("/account/two-factor/verify/", {"code": code_for(device), "next": "/audit/"})
    assert ok.status_code == 302 and ok["Location"] == "/audit/"
    assert client.get("/audit/").status_code == 200


@required
def test_passing_the_code_gives_the_session_a_new_key(world: World) -> None:
    """Whoever knew the key of the password-only session (a fixated or stolen one) must not
    hold a verified session once the person enters their code."""
    device = enrolled(world)
    client = signed_in("bob", "pw-bob")
    before = client.cookies["sessionid"].value
    enrolment_client = signed_in("bob", "pw-bob")

    ok = client.post(
        "/account/two-factor/verify/", {"code": code_for(device), "next": "/approvals/"}
    )
    assert ok.status_code == 302 and ok["Location"] == "/approvals/"
    assert client.cookies["sessionid"].value != before
    assert client.get("/approvals/").status_code == 200
    holder = Client()
    holder.cookies["sessionid"] = before
    assert holder.get("/approvals/").status_code == 302  # the old key: at most a sign-in

    # And the same for the code that finishes setting up a new app.
    TOTPDevice.objects.filter(user=world.bob).delete()
    old_key = enrolment_client.cookies["sessionid"].value
    enrolment_client.post("/account/two-factor/enrol/")
    pending = TOTPDevice.objects.get(user=world.bob, confirmed=False)
    confirmed = enrolment_client.post("/account/two-factor/confirm/", {"code": code_for(pending)})
    assert confirmed.status_code == 302
    assert enrolment_client.cookies["sessionid"].value != old_key
    stale = Client()
    stale.cookies["sessionid"] = old_key
    assert stale.get("/approvals/").status_code == 302


@required
def test_a_guess_in_flight_throttles_one_sent_beside_it(live_world: World) -> None:
    """django-otp reads the throttle, checks the code, then counts a wrong one: codes sent
    side by side were all checked against the same unthrottled device (and each batch
    counted once), so guessing in parallel beat the doubling wait. One check at a time."""
    device = TOTPDevice.objects.create(user=live_world.bob, name="app", confirmed=True)
    guesser, other = signed_in("bob", "pw-bob"), signed_in("bob", "pw-bob")
    original = TOTPDevice.verify_is_allowed

    def slow_for_the_wrong_guess(self: TOTPDevice) -> Any:
        allowed = original(self)
        if threading.current_thread().name == "wrong-guess":
            time.sleep(1.5)  # the wrong guess is still being checked
        return allowed

    answers: dict[str, int] = {}

    def guess(name: str, client: Client, code: str) -> None:
        answers[name] = client.post("/account/two-factor/verify/", {"code": code}).status_code
        connection.close()

    with mock.patch.object(TOTPDevice, "verify_is_allowed", slow_for_the_wrong_guess):
        wrong = threading.Thread(
            target=guess, args=("wrong", guesser, "000000"), name="wrong-guess"
        )
        wrong.start()
        time.sleep(0.5)
        right = threading.Thread(target=guess, args=("right", other, code_for(device)))
        right.start()
        wrong.join(10)
        right.join(10)
    # The right code came while a wrong one was being checked: it waited, and the wrong
    # one's throttle held it off.
    assert answers == {"wrong": 400, "right": 400}
    device.refresh_from_db()
    assert device.throttling_failure_count == 1
