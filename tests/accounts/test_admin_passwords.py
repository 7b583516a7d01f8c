"""Only a superuser chooses a password someone else signs in with: whoever chooses it signs
in as the account (its first sign-in sets up the authenticator app too), and a tool admin
who made an account, granted it a tool and signed in as it decided that tool's calls alone.

Mallory is a tool admin who may also add and change people; she is not a superuser."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import Status
from audit.models import AuditEvent
from tests.accounts.test_admin_accounts import user_form
from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support.totp import code_for
from tests.support.uncommitted import uncommitted

required = override_settings(REQUIRE_2FA=True)
INLINE = {"sso_identity-TOTAL_FORMS": "0", "sso_identity-INITIAL_FORMS": "0"}
CHOSEN = {"usable_password": "true", "password1": "Chosen-9x-pass!", "password2": "Chosen-9x-pass!"}


def signed_in(username: str, password: str) -> Client:
    """A sign-in on the sign-in page, then a code from the person's app if they have one."""
    client = Client()
    response = client.post("/login/", {"username": username, "password": password})
    assert response.status_code == 302, f"{username} could not sign in"
    device = TOTPDevice.objects.filter(user__username=username, confirmed=True).first()
    if device is not None:
        assert (
            client.post("/account/two-factor/verify/", {"code": code_for(device)}).status_code
            == 302
        )
    return client


def enrol_and_approve(client: Client, person: User, call_pk: object, arguments_hash: str) -> None:
    """A reviewer's first sign-in: set up an authenticator app, then approve the call."""
    client.post("/account/two-factor/enrol/", {"next": "/approvals/"})
    device = TOTPDevice.objects.get(user=person)
    confirmed = client.post("/account/two-factor/confirm/", {"code": code_for(device)})
    assert confirmed.status_code == 302
    client.post(
        f"/approvals/{call_pk}/decide/", {"verdict": "approve", "arguments_hash": arguments_hash}
    )


def tool_admin_managing_people() -> tuple[Client, User]:
    mallory = User.objects.create_user("mallory", "mallory@example.com", "pw-mallory")
    mallory.is_staff = True
    mallory.save()
    mallory.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["add_user", "change_user", "view_user", "change_tool", "view_tool"]
        )
    )
    TOTPDevice.objects.create(user=mallory, name="app", confirmed=True)
    return signed_in("mallory", "pw-mallory"), mallory


@required
def test_a_tool_admin_cannot_make_an_account_to_approve_as(world: World) -> None:
    """The add form chose the password; granting others is allowed; the new account's first
    sign-in set up mallory's app: she approved alone (and two such accounts met a quorum
    of two). Made as a tool admin, the account granted its maker the tools instead."""
    admin, _ = tool_admin_managing_people()
    page = admin.get("/admin/auth/user/add/").content.decode()
    assert 'name="username"' in page and 'name="password1"' not in page
    assert "Only a superuser sets someone's password" in page

    # A password posted anyway counts for nothing: the account is made without one.
    response = admin.post("/admin/auth/user/add/", {"username": "eve", **CHOSEN, **INLINE})
    assert response.status_code == 302
    eve = User.objects.get(username="eve")
    assert not eve.has_usable_password()
    (created,) = AuditEvent.objects.filter(action="auth.user_created")
    assert (created.actor_label, created.outcome) == ("mallory", "without_password")

    # Nor is one set afterwards: the page that sets it is a superuser's.
    page = admin.get(f"/admin/auth/user/{eve.pk}/password/")
    assert page.status_code == 403
    response = admin.post(
        f"/admin/auth/user/{eve.pk}/password/",
        {"password1": "Chosen-9x-pass!", "password2": "Chosen-9x-pass!"},
    )
    assert response.status_code == 403
    eve.refresh_from_db()
    assert not eve.has_usable_password()
    assert not AuditEvent.objects.filter(action="auth.password_set").exists()

    # Granting her a tool (and a tool admin's permissions) is still allowed: she is someone
    # else. But nobody can sign in as her who is not her.
    tool = world.tools["send_email"]
    granted = admin.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "permission": "review_tool", "op": "grant", "subject": f"user:{eve.pk}"},
    )
    assert granted.status_code == 302
    assert AuditEvent.objects.filter(action="grant.added", data__user="eve").exists()
    call = make_call(world)
    refused = Client().post("/login/", {"username": "eve", "password": "Chosen-9x-pass!"})
    assert refused.status_code == 200 and "_auth_user_id" not in refused.client.session
    call.refresh_from_db()
    assert call.status == Status.PENDING


@required
def test_a_person_manager_sets_nobodys_password(world: World) -> None:
    """An account that holds no more than she does (charlie's; an SSO account without a
    password) was hers to set the password of, and once granted a tool by her, to approve
    as. Its page shows the password without the button to set it."""
    admin, _ = tool_admin_managing_people()
    sso = User.objects.create_user("sso-frank", "frank@example.com")
    sso.set_unusable_password()
    sso.save()
    for person in (world.charlie, sso):
        change_page = admin.get(f"/admin/auth/user/{person.pk}/change/").content.decode()
        assert "../password/" not in change_page
        assert "Only a superuser sets someone's password" in change_page
        response = admin.post(
            f"/admin/auth/user/{person.pk}/password/",
            {"password1": "Taken-over-9x!", "password2": "Taken-over-9x!"},
        )
        assert response.status_code == 403
        person.refresh_from_db()
        assert not person.check_password("Taken-over-9x!")
    assert world.charlie.check_password("pw-charlie")
    assert not sso.has_usable_password()
    assert not AuditEvent.objects.filter(action="auth.password_set").exists()
    # The rest of the page is hers as before (charlie holds no more than she does).
    response = admin.post(
        f"/admin/auth/user/{world.charlie.pk}/change/",
        user_form(world.charlie, email="charlie@example.org"),
    )
    assert response.status_code == 302
    world.charlie.refresh_from_db()
    assert world.charlie.email == "charlie@example.org"


@required
def test_a_superuser_onboards_a_reviewer_with_a_password_as_before(world: World) -> None:
    """Superusers set passwords (audited): the new reviewer signs in, sets up their app and
    decides calls."""
    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    TOTPDevice.objects.create(user=root, name="app", confirmed=True)
    admin = signed_in("root", "pw-root")
    assert 'name="password1"' in admin.get("/admin/auth/user/add/").content.decode()
    response = admin.post("/admin/auth/user/add/", {"username": "erin", **CHOSEN, **INLINE})
    assert response.status_code == 302
    erin = User.objects.get(username="erin")
    assert "../password/" in admin.get(f"/admin/auth/user/{erin.pk}/change/").content.decode()
    tool = world.tools["send_email"]
    admin.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "permission": "review_tool", "op": "grant", "subject": f"user:{erin.pk}"},
    )
    call = make_call(world)
    enrol_and_approve(signed_in("erin", "Chosen-9x-pass!"), erin, call.pk, call.arguments_hash)
    call.refresh_from_db()
    assert call.status != Status.PENDING
    (created,) = AuditEvent.objects.filter(action="auth.user_created")
    assert (created.actor_label, created.outcome) == ("root", "with_password")


@pytest.mark.django_db(transaction=True)
def test_a_password_set_as_the_account_is_deactivated_does_not_activate_it_again(
    world: World,
) -> None:
    """Root sets bob's password as another admin deactivates bob (he left). Django's page read
    bob's row before the deactivation committed and saved it whole with the new password:
    bob was active again, with a password a superuser knows. Only the password is written."""
    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    client = Client()
    client.force_login(root)
    with uncommitted(lambda: User.objects.filter(pk=world.bob.pk).update(is_active=False)):
        response = client.post(f"/admin/auth/user/{world.bob.pk}/password/", CHOSEN)
    assert response.status_code == 302
    bob = User.objects.get(pk=world.bob.pk)
    assert (bob.is_active, bob.check_password("Chosen-9x-pass!")) == (False, True)
