"""What an admin can do to another person's way in: setting their password is audited; their
authenticator app can be deleted (audited), never added, edited or read."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.forms import modelform_factory
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.admin import PersonForm, TeamForm
from audit.models import AuditEvent
from audit.receivers import attempted_name
from tests.conftest import World
from tools_registry import services as registry_services
from tools_registry.models import Tool

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

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


def test_a_team_a_tool_escalates_to_is_not_deleted_under_it(world: World) -> None:
    """Deleting the team cleared the tool's escalation team: a policy change with no
    ``tool.policy_changed`` and no new policy version. The admin now says which tool still
    names it (as a tool): its escalation is changed there first, audited."""
    from django.contrib.auth.models import Group

    from tools_registry import services as registry_services

    team = Group.objects.create(name="payments-oncall")
    tool = world.tools["issue_refund"]
    registry_services.update_policy(tool=tool, changes={"escalation_group": team}, changed_by=None)
    version = Tool.objects.get(pk=tool.pk).policy_version
    client, _ = admin_client()
    for sent in (
        (f"/admin/auth/group/{team.pk}/delete/", {"post": "yes"}),
        ("/admin/auth/group/", {"action": "delete_selected", "_selected_action": [team.pk], "post": "yes"}),
    ):  # fmt: skip
        response = client.post(*sent)
        assert response.status_code == 200 and "Cannot delete group" in response.content.decode()
    assert Group.objects.filter(pk=team.pk).exists()
    stored = Tool.objects.get(pk=tool.pk)
    assert (stored.escalation_group_id, stored.policy_version) == (team.pk, version)
    assert not AuditEvent.objects.filter(action="auth.team_deleted").exists()


def _rule_from(team: str) -> dict[str, object]:
    return {"when": "true", "then": "require", "approvals": 2, "team": team}


def test_a_team_a_tools_rules_name_is_neither_deleted_nor_renamed_under_them(
    world: World,
) -> None:
    """A rule names its team by name: the team deleted or renamed, the rule asked for
    approvers from a team nobody is in, and every call it decided could only expire. The
    admin now says which tools' rules name it; they are changed first, audited."""
    from django.contrib.auth.models import Group

    team = Group.objects.create(name="finance")
    for name in ("issue_refund", "send_email"):
        registry_services.update_policy(
            tool=world.tools[name], changes={"rules": [_rule_from("finance")]}, changed_by=None
        )
    client, _ = admin_client()
    for sent in (
        (f"/admin/auth/group/{team.pk}/delete/", {"post": "yes"}),
        ("/admin/auth/group/", {"action": "delete_selected", "_selected_action": [team.pk], "post": "yes"}),
    ):  # fmt: skip
        response = client.post(*sent)
        page = response.content.decode()
        assert response.status_code == 200 and "Cannot delete group" in page
        assert "The policy rules of issue_refund, send_email name the team" in page
    renamed = client.post(
        f"/admin/auth/group/{team.pk}/change/",
        {"name": "finance-emea", "shown_state": team_shown(team)},
    )
    assert renamed.status_code == 200
    (error,) = renamed.context["adminform"].form.errors["name"]
    assert error.startswith("Not renamed. The policy rules of issue_refund, send_email name")
    assert Group.objects.get(pk=team.pk).name == "finance"
    assert not AuditEvent.objects.filter(action__in=["auth.team_deleted", "auth.team_changed"])
    # Once no rule names it, it is renamed and deleted as any team.
    for name in ("issue_refund", "send_email"):
        registry_services.update_policy(
            tool=world.tools[name], changes={"rules": []}, changed_by=None
        )
    renamed = client.post(
        f"/admin/auth/group/{team.pk}/change/",
        {"name": "finance-emea", "shown_state": team_shown(team)},
    )
    assert renamed.status_code == 302
    response = client.post(f"/admin/auth/group/{team.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Group.objects.filter(pk=team.pk).exists()


def test_changing_someones_name_or_address_is_audited(world: World) -> None:
    """Separation of duties knows the person an agent acts for by their username and
    e-mail: a call made for bob@example.com is not bob's to approve until his address is
    another. Teams, permissions and status were audited when changed; these were not."""
    client, _ = admin_client()
    # A superuser's form holds the single sign-on inline (empty) too.
    inline = {f"sso_identity-{n}": v for n, v in (("TOTAL_FORMS", 0), ("INITIAL_FORMS", 0))}
    response = client.post(
        f"/admin/auth/user/{world.bob.pk}/change/",
        {**user_form(world.bob, username="robert", email="robert@elsewhere.example"), **inline},
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    (event,) = AuditEvent.objects.filter(action="user.access_changed")
    assert event.actor_label == "root"
    assert set(event.data["before"]) == set(event.data["after"]) == {"username", "email"}
    assert (event.data["user"], event.data["before"]["username"]) == ("robert", "bob")
    assert event.data["before"]["email"] != event.data["after"]["email"]
    # Saved again unchanged: nothing recorded.
    client.post(
        f"/admin/auth/user/{world.bob.pk}/change/",
        {**user_form(User.objects.get(pk=world.bob.pk)), **inline},
    )
    assert AuditEvent.objects.filter(action="user.access_changed").count() == 1


def test_deactivating_someone_signs_their_sessions_out_for_good(world: World) -> None:
    """An admin deactivates bob (his session was stolen, say) and makes him active again a
    few minutes later (his password reset at the provider, which keeps no password here).
    Django only stopped reading his sessions while he was inactive: active again, every one
    of them, the stolen one too, was signed in again. Others' sessions are left alone."""
    client, _ = admin_client()
    stolen, alices = Client(), Client()
    stolen.force_login(world.bob)
    alices.force_login(world.alice)
    assert stolen.get("/account/").status_code == 200
    url = f"/admin/auth/user/{world.bob.pk}/change/"
    inline = {f"sso_identity-{n}": v for n, v in (("TOTAL_FORMS", 0), ("INITIAL_FORMS", 0))}

    off = client.post(url, {**user_form(world.bob, is_active=""), **inline})
    assert off.status_code == 302, off.context["adminform"].form.errors
    assert stolen.get("/account/").status_code == 302
    inactive = User.objects.get(pk=world.bob.pk)
    on = client.post(url, {**user_form(inactive, is_active="on"), **inline})
    assert on.status_code == 302, on.context["adminform"].form.errors
    assert User.objects.get(pk=world.bob.pk).is_active

    again = stolen.get("/account/")
    assert again.status_code == 302 and again["Location"].startswith("/login/")
    assert alices.get("/account/").status_code == 200
    assert client.get("/admin/").status_code == 200  # the admin's own session too


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
        {"name": "payments-team", "permissions": [view_audit.pk], "shown_state": team_shown(team)},
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
        {"name": "payments-team", "permissions": [view_audit.pk], "shown_state": team_shown(team)},
    )
    assert AuditEvent.objects.filter(action="auth.team_changed").count() == 1


def test_creating_a_team_is_audited_with_who_made_it(world: World) -> None:
    """A team made with *Can change tool* makes tool admins of whoever joins it: the trail
    said only that Countersign had given the permission (``auth.permissions_changed``)."""
    from django.contrib.auth.models import Permission

    change_tool = Permission.objects.get(codename="change_tool")
    client, _ = admin_client()
    response = client.post(
        "/admin/auth/group/add/", {"name": "tool-admins", "permissions": [change_tool.pk]}
    )
    assert response.status_code == 302
    (event,) = AuditEvent.objects.filter(action="auth.team_created")
    assert (event.actor_label, event.data) == (
        "root",
        {"team": "tool-admins", "permissions": ["tools_registry.change_tool"]},
    )
    assert not AuditEvent.objects.filter(action="auth.team_changed").exists()


def people_manager() -> tuple[Client, User]:
    """Mallory is staff and may change people (auth.change_user), nothing more: someone
    trusted to manage reviewers' accounts, not to make admins."""
    from django.contrib.auth.models import Permission

    mallory = User.objects.create_user("mallory", "mallory@example.com", "pw-mallory")
    mallory.is_staff = True
    mallory.save()
    mallory.user_permissions.add(
        Permission.objects.get(codename="change_user"), Permission.objects.get(codename="view_user")
    )
    client = Client()
    client.force_login(mallory)
    return client, mallory


def team_shown(team: Group) -> str:
    """The digest a team's page carries of what it showed (``TeamForm``), as stored now."""
    form = modelform_factory(Group, form=TeamForm, fields=["name"])(instance=team)
    return str(form.initial["shown_state"])


def user_form(user: User, **changes: object) -> dict[str, object]:
    """The user admin's change form as it would be posted, with ``changes``."""
    form: dict[str, object] = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "is_superuser": "on" if user.is_superuser else "",
        "groups": [g.pk for g in user.groups.all()],
        "user_permissions": [p.pk for p in user.user_permissions.all()],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "shown_state": PersonForm(instance=user).initial["shown_state"],  # as stored now
        "ssoidentity-TOTAL_FORMS": "0",
        "ssoidentity-INITIAL_FORMS": "0",
        "ssoidentity-MIN_NUM_FORMS": "0",
        "ssoidentity-MAX_NUM_FORMS": "1",
    }
    form.update(changes)
    return {k: v for k, v in form.items() if v != ""}


def test_whoever_may_change_people_cannot_make_themselves_superuser(world: World) -> None:
    """Django's user admin lets anyone with auth.change_user tick *superuser status* on
    their own account: a person manager became a superuser (every tool's reviewer)."""
    client, mallory = people_manager()
    response = client.post(
        f"/admin/auth/user/{mallory.pk}/change/", user_form(mallory, is_superuser="on")
    )
    assert response.status_code in (200, 302, 403)
    mallory.refresh_from_db()
    assert mallory.is_superuser is False
    # Nor anyone else.
    client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/", user_form(world.charlie, is_superuser="on")
    )
    world.charlie.refresh_from_db()
    assert world.charlie.is_superuser is False
    # An ordinary change still goes through, audited as before.
    response = client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/",
        user_form(world.charlie, first_name="Charlie"),
    )
    assert response.status_code == 302
    world.charlie.refresh_from_db()
    assert world.charlie.first_name == "Charlie"


def test_whoever_may_change_people_grants_only_the_permissions_they_hold(world: World) -> None:
    """A model-wide permission such as *Can change tool* makes a tool admin, who grants
    every review scope: a person manager gave it to themselves."""
    from django.contrib.auth.models import Permission

    client, mallory = people_manager()
    change_tool = Permission.objects.get(codename="change_tool")
    view_user = Permission.objects.get(codename="view_user")
    held = [p.pk for p in mallory.user_permissions.all()]
    client.post(
        f"/admin/auth/user/{mallory.pk}/change/",
        user_form(mallory, user_permissions=[*held, change_tool.pk]),
    )
    assert not User.objects.get(pk=mallory.pk).has_perm("tools_registry.change_tool")
    client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/",
        user_form(world.charlie, user_permissions=[change_tool.pk]),
    )
    assert not User.objects.get(pk=world.charlie.pk).has_perm("tools_registry.change_tool")
    # What they hold themselves they may give, audited as before.
    response = client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/",
        user_form(world.charlie, user_permissions=[view_user.pk]),
    )
    assert response.status_code == 302
    assert User.objects.get(pk=world.charlie.pk).has_perm("auth.view_user")
    (event,) = AuditEvent.objects.filter(action="user.access_changed")
    assert event.actor_label == "mallory"
    assert (event.data["before"], event.data["after"]) == (
        {"permissions": []},
        {"permissions": ["auth.view_user"]},
    )


def test_whoever_may_change_people_cannot_take_over_or_lock_out_a_superuser(
    world: World,
) -> None:
    """Setting a superuser's password signs one in as them; deactivating one locks them
    out. Neither is for someone who is not a superuser."""
    client, _ = people_manager()
    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    response = client.post(
        f"/admin/auth/user/{root.pk}/password/",
        {"password1": "Taken-over-9x!", "password2": "Taken-over-9x!"},
    )
    assert response.status_code == 403
    client.post(f"/admin/auth/user/{root.pk}/change/", user_form(root, is_active=""))
    root.refresh_from_db()
    assert root.check_password("pw-root") and root.is_active
    assert not AuditEvent.objects.filter(action__in=["auth.password_set", "user.access_changed"])
    # They still see the superuser, read-only.
    page = client.get(f"/admin/auth/user/{root.pk}/change/")
    assert page.status_code == 200 and 'name="is_active"' not in page.content.decode()


def test_whoever_may_change_people_joins_no_team_themselves_nor_one_that_holds_more(
    world: World,
) -> None:
    """A team brings its review grants and its model-wide permissions: a person manager
    put themselves in the reviewers' team, or anyone in the tool admins' team."""
    from django.contrib.auth.models import Group, Permission

    client, mallory = people_manager()
    reviewers = Group.objects.get(name="reviewers")
    registry_services.grant_review(tool=world.tools["issue_refund"], group=reviewers)
    # Mallory reviews refunds herself: the reviewers' team holds nothing more than she does.
    registry_services.grant_review(tool=world.tools["issue_refund"], user=mallory)
    tool_admins = Group.objects.create(name="tool-admins")
    tool_admins.permissions.add(Permission.objects.get(codename="change_tool"))
    client.post(f"/admin/auth/user/{mallory.pk}/change/", user_form(mallory, groups=[reviewers.pk]))
    assert not mallory.groups.exists()
    client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/",
        user_form(world.charlie, groups=[tool_admins.pk]),
    )
    assert not world.charlie.groups.exists()
    # Someone else into the reviewers' team is theirs to do, audited as before.
    response = client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/",
        user_form(world.charlie, groups=[reviewers.pk]),
    )
    assert response.status_code == 302
    assert list(world.charlie.groups.all()) == [reviewers]
    own = client.get(f"/admin/auth/user/{mallory.pk}/change/").content.decode()
    assert 'name="groups"' not in own and 'name="first_name"' in own
    offered = client.get(f"/admin/auth/user/{world.charlie.pk}/change/").content.decode()
    assert "reviewers" in offered and "tool-admins" not in offered
    # Their own name they may still change, with no access change recorded.
    response = client.post(
        f"/admin/auth/user/{mallory.pk}/change/", user_form(mallory, first_name="Mal")
    )
    assert response.status_code == 302
    assert [e.data["user"] for e in AuditEvent.objects.filter(action="user.access_changed")] == [
        "charlie"
    ]


def test_whoever_may_change_people_cannot_take_over_a_tool_admin(world: World) -> None:
    """Setting a tool admin's password signs one in as a tool admin, who grants every
    review scope: only someone who may change tools themselves may."""
    from django.contrib.auth.models import Permission

    client, _ = people_manager()
    world.alice.is_staff = True
    world.alice.save()
    world.alice.user_permissions.add(Permission.objects.get(codename="change_tool"))
    response = client.post(
        f"/admin/auth/user/{world.alice.pk}/password/",
        {"password1": "Taken-over-9x!", "password2": "Taken-over-9x!"},
    )
    assert response.status_code == 403
    world.alice.refresh_from_db()
    assert world.alice.check_password("pw-alice")


def test_whoever_may_change_teams_gives_a_team_only_the_permissions_they_hold(
    world: World,
) -> None:
    """A team's permissions are its members': a team manager in the reviewers' team gave
    it *Can change tool*, and so themselves."""
    from django.contrib.auth.models import Group, Permission

    client, mallory = people_manager()
    mallory.user_permissions.add(Permission.objects.get(codename="change_group"))
    team = Group.objects.get(name="reviewers")
    mallory.groups.add(team)
    change_tool = Permission.objects.get(codename="change_tool")
    client.post(
        f"/admin/auth/group/{team.pk}/change/",
        {"name": "reviewers", "permissions": [change_tool.pk]},
    )
    assert not team.permissions.exists()
    assert not User.objects.get(pk=mallory.pk).has_perm("tools_registry.change_tool")
    # Nor change a team that holds what they do not.
    admins = Group.objects.create(name="tool-admins")
    admins.permissions.add(change_tool)
    response = client.post(
        f"/admin/auth/group/{admins.pk}/change/",
        {"name": "renamed", "permissions": [change_tool.pk]},
    )
    assert response.status_code == 403
    assert Group.objects.filter(name="tool-admins").exists()


def test_whoever_may_change_people_cannot_rename_themselves_out_of_a_conflict(
    world: World,
) -> None:
    """The person an agent acts for may not approve its call, matched by name or e-mail:
    a reviewer who may change people changed their own address, then approved."""
    from tests.approvals.conftest import make_call
    from tests.approvals.views.test_decide import post_decision

    client, mallory = people_manager()
    registry_services.grant_review(tool=world.tools["send_email"], user=mallory)
    call = make_call(world, "send_email", on_behalf_of="mallory@example.com")
    client.post(
        f"/admin/auth/user/{mallory.pk}/change/", user_form(mallory, email="m@elsewhere.example")
    )
    response = post_decision(client, call, "approve")
    assert "acts on your behalf" in response.content.decode()
    assert not call.decisions.exists()
    client.post(f"/admin/auth/user/{mallory.pk}/change/", user_form(mallory, username="mal"))
    mallory.refresh_from_db()
    assert (mallory.username, mallory.email) == ("mallory", "mallory@example.com")


def test_whoever_may_delete_authenticator_apps_cannot_strip_a_superusers(world: World) -> None:
    """Without their app, a superuser's password alone opens their account."""
    from django.contrib.auth.models import Permission

    client, mallory = people_manager()
    mallory.user_permissions.add(
        Permission.objects.get(codename="delete_totpdevice"),
        Permission.objects.get(codename="view_totpdevice"),
    )
    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    theirs = TOTPDevice.objects.create(user=root, name="app", confirmed=True, key=KEY)
    charlies = TOTPDevice.objects.create(user=world.charlie, name="app", confirmed=True, key=KEY)
    assert (
        client.post(f"/admin/otp_totp/totpdevice/{theirs.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    client.post(
        "/admin/otp_totp/totpdevice/",
        {"action": "delete_selected", "_selected_action": [theirs.pk], "post": "yes"},
    )
    assert TOTPDevice.objects.filter(pk=theirs.pk).exists()
    # Someone holding no more than they do: their lost app is theirs to remove, audited.
    client.post(f"/admin/otp_totp/totpdevice/{charlies.pk}/delete/", {"post": "yes"})
    assert not TOTPDevice.objects.filter(pk=charlies.pk).exists()
    (event,) = AuditEvent.objects.filter(action="auth.two_factor_removed")
    assert event.data["user"] == "charlie"


def test_whoever_may_change_people_cannot_take_over_a_reviewer_of_tools_they_do_not_review(
    world: World,
) -> None:
    """Setting a reviewer's password signs one in as them, to approve calls of the tools
    they are granted: a person manager who reviews none of them approved as the reviewer."""
    from django.contrib.auth.models import Group, Permission

    client, mallory = people_manager()
    # Bob is granted every demo tool directly; charlie, refunds through a team.
    reviewers = Group.objects.get(name="reviewers")
    registry_services.grant_review(tool=world.tools["issue_refund"], group=reviewers)
    world.charlie.groups.add(reviewers)
    device = TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True, key=KEY)
    mallory.user_permissions.add(
        *Permission.objects.filter(codename__in=["delete_totpdevice", "view_totpdevice"])
    )
    for person in (world.bob, world.charlie):
        response = client.post(
            f"/admin/auth/user/{person.pk}/password/",
            {"password1": "Taken-over-9x!", "password2": "Taken-over-9x!"},
        )
        assert response.status_code == 403
        client.post(f"/admin/auth/user/{person.pk}/change/", user_form(person, is_active=""))
        person.refresh_from_db()
        assert person.is_active and not person.check_password("Taken-over-9x!")
    assert (
        client.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert TOTPDevice.objects.filter(pk=device.pk).exists()
    assert not AuditEvent.objects.filter(action__in=["auth.password_set", "user.access_changed"])
    # Once they hold the same grant (here directly, charlie's through the team), charlie is
    # theirs to change (never to set the password of: only a superuser does).
    registry_services.grant_review(tool=world.tools["issue_refund"], user=mallory)
    response = client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/", user_form(world.charlie, is_active="")
    )
    assert response.status_code == 302
    world.charlie.refresh_from_db()
    assert not world.charlie.is_active


def test_whoever_may_change_people_puts_nobody_in_a_team_with_grants_they_lack(
    world: World,
) -> None:
    """Set an outsider's password, put them in the refund reviewers' team, sign in as
    them: a person manager who reviews nothing approved refunds."""
    from django.contrib.auth.models import Group, Permission

    client, mallory = people_manager()
    mallory.user_permissions.add(Permission.objects.get(codename="change_group"))
    reviewers = Group.objects.get(name="reviewers")
    registry_services.grant_review(tool=world.tools["issue_refund"], group=reviewers)
    client.post(
        f"/admin/auth/user/{world.charlie.pk}/change/",
        user_form(world.charlie, groups=[reviewers.pk]),
    )
    assert not world.charlie.groups.exists()
    offered = client.get(f"/admin/auth/user/{world.charlie.pk}/change/").content.decode()
    assert 'name="groups"' in offered and "reviewers" not in offered
    # Nor renames the team (rules name teams) or changes it otherwise.
    response = client.post(
        f"/admin/auth/group/{reviewers.pk}/change/", {"name": "renamed", "permissions": []}
    )
    assert response.status_code == 403
    assert Group.objects.filter(name="reviewers").exists()


def test_changing_ones_own_password_in_the_admin(world: World) -> None:
    client, root = admin_client()
    page = client.get("/admin/password_change/")
    assert page.status_code == 200 and "Countersign administration" in page.content.decode()
    new = {"new_password1": "Zq-new-pass-77", "new_password2": "Zq-new-pass-77"}
    wrong = client.post("/admin/password_change/", {"old_password": "nope", **new})
    assert wrong.status_code == 200 and "incorrectly" in wrong.content.decode()
    right = client.post("/admin/password_change/", {"old_password": "pw-root", **new})
    assert right.status_code == 302 and right["Location"] == "/admin/password_change/done/"
    root.refresh_from_db()
    assert root.check_password("Zq-new-pass-77")
    assert client.get("/admin/").status_code == 200  # this session goes on


def test_whoever_may_change_people_sets_their_own_password_only_with_the_old_one(
    world: World,
) -> None:
    """The page that sets someone's password asks for no old password: a stolen admin
    session set one of its choosing for its own account (the owner locked out), where the
    admin's "Change password" asks for the old one and counts it as a sign-in."""
    client, mallory = people_manager()
    for own in (str(mallory.pk), f"0{mallory.pk}"):
        page = client.get(f"/admin/auth/user/{own}/password/")
        assert page.status_code == 302 and page["Location"] == "/admin/password_change/"
        response = client.post(
            f"/admin/auth/user/{own}/password/",
            {"password1": "Taken-over-9x!", "password2": "Taken-over-9x!"},
        )
        assert response.status_code == 302
        assert response["Location"] == "/admin/password_change/"
    mallory.refresh_from_db()
    assert mallory.check_password("pw-mallory")
    assert not AuditEvent.objects.filter(action="auth.password_set").exists()


def test_whoever_may_see_authenticator_apps_cannot_spell_out_their_secrets(
    world: World,
) -> None:
    """The list hides each app's secret, but filtered ?key__startswith=3 it said whether
    the secret began so: a digit at a time, whoever may view the apps (to delete a lost
    one) read a superuser's, and with their password passed as them."""
    from django.contrib.auth.models import Permission

    client, mallory = people_manager()
    mallory.user_permissions.add(Permission.objects.get(codename="view_totpdevice"))
    TOTPDevice.objects.create(user=world.bob, name="app", confirmed=True, key=KEY)
    assert client.get("/admin/otp_totp/totpdevice/").status_code == 200
    for lookup in (f"key__startswith={KEY[:4]}", f"key={KEY}", "key__gt=3"):
        response = client.get(f"/admin/otp_totp/totpdevice/?{lookup}")
        assert response.status_code == 400, lookup
    # Nor from the people's list, through their apps.
    response = client.get(f"/admin/auth/user/?totpdevice__key={KEY}")
    assert response.status_code == 400


def test_the_failed_sign_ins_page_cannot_spell_out_a_name_tried(world: World) -> None:
    """The page shows a name that is no account as a fingerprint (a password typed into
    the name box), but its search and its list lookups matched parts of it: "hun" found
    the attempt, then "hunt"..., and the form data axes keeps held it too."""
    from axes.models import AccessAttempt

    Client().post("/login/", {"username": "hunter2-typed-as-name", "password": "x"})
    Client().post("/login/", {"username": "bob", "password": "wrong"})
    assert AccessAttempt.objects.count() == 2
    client, _ = admin_client()
    for query in (
        "username__startswith=hun",
        "username__icontains=ter2",
        "username__gt=h",
        "post_data__contains=hun",
        "get_data__contains=hun",
    ):
        assert client.get(f"/admin/axes/accessattempt/?{query}").status_code == 400, query
    searched = client.get("/admin/axes/accessattempt/?q=hun")
    assert searched.status_code == 200 and searched.context["cl"].result_count == 0
    # A name is still found whole, as an admin looks up the lock on bob's account.
    for query in ("q=bob", "username=bob"):
        found = client.get(f"/admin/axes/accessattempt/?{query}")
        assert found.status_code == 200 and found.context["cl"].result_count == 1, query


def test_an_account_created_in_the_admin_is_audited_with_whether_its_password_was_chosen(
    world: World,
) -> None:
    """Deleting an account, or setting its password, is in the trail; making one with a
    password the admin chose (who can then sign in as it, and wait for it to be granted
    tools) left nothing."""
    client, _ = admin_client()
    inline = {"sso_identity-TOTAL_FORMS": "0", "sso_identity-INITIAL_FORMS": "0"}
    response = client.post(
        "/admin/auth/user/add/",
        {"username": "eve", "usable_password": "true",
         "password1": "Chosen-by-root-9x!", "password2": "Chosen-by-root-9x!", **inline},
    )  # fmt: skip
    assert response.status_code == 302
    assert User.objects.get(username="eve").check_password("Chosen-by-root-9x!")
    response = client.post(
        "/admin/auth/user/add/", {"username": "sso-frank", "usable_password": "false", **inline}
    )
    assert response.status_code == 302
    created = AuditEvent.objects.filter(action="auth.user_created").order_by("id")
    assert [(e.actor_label, e.outcome, e.data) for e in created] == [
        ("root", "with_password", {"user": "eve"}),
        ("root", "without_password", {"user": "sso-frank"}),
    ]
    assert "Chosen-by-root" not in str([e.data for e in created])
