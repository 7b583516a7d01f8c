"""What an admin can do to another person's way in: setting their password is audited; their
authenticator app can be deleted (audited), never added, edited or read."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from audit.receivers import attempted_name
from tests.conftest import World

KEY = "3132333435363738393031323334353637383930"


def admin_client() -> tuple[Client, User]:
    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    client = Client()
    client.force_login(root)
    return client, root


def test_an_admin_setting_someones_password_is_audited(world: World) -> None:
    client, _ = admin_client()
    response = client.post(
        f"/admin/auth/user/{world.bob.pk}/password/",
        {"password1": "Taken-over-9x!", "password2": "Taken-over-9x!"},
    )
    assert response.status_code == 302
    world.bob.refresh_from_db()
    assert world.bob.check_password("Taken-over-9x!")
    (event,) = AuditEvent.objects.filter(action="auth.password_set")
    assert (event.actor_label, event.outcome, event.data) == (
        "root",
        "set_by_admin",
        {"user": "bob"},
    )
    assert "Taken-over" not in str(event.data)
    # A form filled wrong sets nothing and records nothing.
    client.post(
        f"/admin/auth/user/{world.bob.pk}/password/",
        {"password1": "Another-9x!", "password2": "Different-9x!"},
    )
    assert AuditEvent.objects.filter(action="auth.password_set").count() == 1


def test_an_admin_may_delete_someones_authenticator_app_audited(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True, key=KEY)
    client, _ = admin_client()
    listed = client.get("/admin/otp_totp/totpdevice/")
    assert listed.status_code == 200 and "bob" in listed.content.decode()
    response = client.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(pk=device.pk).exists()
    (event,) = AuditEvent.objects.filter(action="auth.two_factor_removed")
    assert (event.actor_label, event.data) == ("root", {"user": "bob", "device": "app"})
    # The list's bulk delete is audited too, one event per device.
    devices = [
        TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
        for user in (world.bob, world.charlie)
    ]
    client.post(
        "/admin/otp_totp/totpdevice/",
        {
            "action": "delete_selected",
            "_selected_action": [d.pk for d in devices],
            "post": "yes",
        },
    )
    assert not TOTPDevice.objects.filter(pk__in=[d.pk for d in devices]).exists()
    removed = AuditEvent.objects.filter(action="auth.two_factor_removed").order_by("id")
    assert sorted(e.data["user"] for e in removed[1:]) == ["bob", "charlie"]


def test_nobody_adds_edits_or_reads_someone_elses_authenticator_app(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True, key=KEY)
    client, _ = admin_client()
    added = client.post(
        "/admin/otp_totp/totpdevice/add/",
        {
            "user": world.bob.pk,
            "name": "mine now",
            "confirmed": "on",
            "key": KEY,
            "step": 30,
            "t0": 0,
            "digits": 6,
            "tolerance": 1,
            "drift": 0,
            "throttling_failure_count": 0,
        },
    )
    assert added.status_code == 403
    assert TOTPDevice.objects.filter(user=world.bob).count() == 1
    page = client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/")
    assert page.status_code == 200  # shown read-only
    assert KEY not in page.content.decode()
    changed = client.post(
        f"/admin/otp_totp/totpdevice/{device.pk}/change/",
        {"user": world.bob.pk, "name": "renamed", "confirmed": "on", "drift": 0},
    )
    assert changed.status_code == 403
    assert TOTPDevice.objects.get(pk=device.pk).name == "app"
    for view in ("config", "qrcode"):
        assert client.get(f"/admin/otp_totp/totpdevice/{device.pk}/{view}/").status_code == 403


def test_deleting_a_team_or_a_person_is_audited_with_what_goes_with_them(world: World) -> None:
    """Deleting cascades past the signals that audit a grant or a team change: the team's
    members lose its grants, a person their own, with no other event."""
    from django.contrib.auth.models import Group

    from tools_registry import services as registry_services
    from tools_registry.permissions import can_review

    team = Group.objects.create(name="payments-reviewers")
    tool = world.tools["issue_refund"]
    registry_services.grant_review(tool=tool, group=team)
    world.charlie.groups.add(team)
    assert can_review(User.objects.get(pk=world.charlie.pk), tool)
    client, _ = admin_client()
    response = client.post(f"/admin/auth/group/{team.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not can_review(User.objects.get(pk=world.charlie.pk), tool)
    (event,) = AuditEvent.objects.filter(action="auth.team_deleted")
    assert (event.actor_label, event.data) == (
        "root",
        {
            "team": "payments-reviewers",
            "members": ["charlie"],
            "grants": {"issue_refund": ["review_tool"]},
        },
    )
    dana = User.objects.create_user("dana", "dana@example.com", "pw")
    registry_services.grant_review(tool=tool, user=dana)
    client.post(
        "/admin/auth/user/",
        {"action": "delete_selected", "_selected_action": [dana.pk], "post": "yes"},
    )
    assert not User.objects.filter(pk=dana.pk).exists()
    (gone,) = AuditEvent.objects.filter(action="auth.user_deleted")
    assert gone.data == {
        "user": "dana",
        "teams": [],
        "is_superuser": False,
        "grants": {"issue_refund": ["review_tool"]},
    }


def test_an_admin_lifting_a_lockout_is_audited(world: World) -> None:
    """The lock is in the trail (auth.locked_out); so is whoever lifted it early. A name
    that is no account may be a mistyped password: kept only as a fingerprint."""
    from axes.models import AccessAttempt

    locked = AccessAttempt.objects.create(
        username="bob", ip_address="203.0.113.9", failures_since_start=20, user_agent="x",
        get_data="", post_data="", http_accept="", path_info="/login/",
    )  # fmt: skip
    typo = AccessAttempt.objects.create(
        username="hunter2-typed-as-name", ip_address="203.0.113.9", failures_since_start=3,
        user_agent="x", get_data="", post_data="", http_accept="", path_info="/login/",
    )  # fmt: skip
    client, _ = admin_client()
    response = client.post(f"/admin/axes/accessattempt/{locked.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    client.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [typo.pk], "post": "yes"},
    )
    assert not AccessAttempt.objects.exists()
    lifted = list(AuditEvent.objects.filter(action="auth.lockout_lifted").order_by("id"))
    assert [(e.actor_label, e.data["known_user"], e.data["ip"]) for e in lifted] == [
        ("root", True, "203.0.113.9"),
        ("root", False, "203.0.113.9"),
    ]
    assert lifted[0].data["username"] == "bob"
    assert "hunter2" not in str(lifted[1].data)


def test_the_failed_sign_ins_page_shows_a_name_that_is_no_account_as_a_fingerprint(
    world: World,
) -> None:
    """People type their password into the name box: axes' admin showed it in full, in the
    list, on the attempt's page and in its form data, where the trail keeps a fingerprint."""
    from axes.models import AccessAttempt

    anonymous = Client()
    anonymous.post("/login/", {"username": "hunter2-typed-as-name", "password": "x"})
    anonymous.post("/login/", {"username": "bob", "password": "wrong"})
    typo = AccessAttempt.objects.get(username="hunter2-typed-as-name")
    client, _ = admin_client()
    listed = client.get("/admin/axes/accessattempt/").content.decode()
    shown = client.get(f"/admin/axes/accessattempt/{typo.pk}/change/").content.decode()
    for page in (listed, shown):
        assert "hunter2" not in page
    assert attempted_name("hunter2-typed-as-name")[0] in listed
    assert ">bob<" in listed


def test_renaming_a_team_or_changing_its_permissions_is_audited(world: World) -> None:
    """Rules and the single sign-on map name teams: a renamed team no longer gives the
    approvals a rule asks of it (and a new one may take its name); its permissions are
    its members'. Neither said who did it: a rename was not in the trail at all."""
    from django.contrib.auth.models import Group, Permission

    team = Group.objects.create(name="payments-reviewers")
    world.charlie.groups.add(team)
    view_audit = Permission.objects.get(codename="view_auditevent")
    client, _ = admin_client()
    response = client.post(
        f"/admin/auth/group/{team.pk}/change/",
        {"name": "payments-team", "permissions": [view_audit.pk]},
    )
    assert response.status_code == 302
    (event,) = AuditEvent.objects.filter(action="auth.team_changed")
    assert (event.actor_label, event.data) == (
        "root",
        {
            "team": "payments-team",
            "members": ["charlie"],
            "before": {"name": "payments-reviewers", "permissions": []},
            "after": {"name": "payments-team", "permissions": ["audit.view_auditevent"]},
        },
    )
    # Saving it unchanged records nothing.
    client.post(
        f"/admin/auth/group/{team.pk}/change/",
        {"name": "payments-team", "permissions": [view_audit.pk]},
    )
    assert AuditEvent.objects.filter(action="auth.team_changed").count() == 1
