"""The admin's reviewer-scopes pages: direct and team grants shown, granted and revoked with
pickers through the audited services, CSP-clean; guardian's pages for superusers only."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.utils.text import capfirst

from tests.conftest import World, events
from tools_registry import services
from tools_registry.admin_scopes import PERMISSION_VERBS
from tools_registry.permissions import can_review

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world", "world")


@pytest.fixture
def tess_client(world: World) -> Client:
    """A tool admin who is not a superuser: staff with the tool permissions."""
    person = User.objects.create_user("tess", "tess@example.com", "pw", is_staff=True)
    person.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_tool", "change_tool"])
    )
    client = Client()
    client.force_login(person)
    return client


def test_a_tools_page_shows_direct_and_team_grants(world: World, tess_client: Client) -> None:
    tool = world.tools["send_email"]
    reviewers = Group.objects.get(name="reviewers")
    reviewers.user_set.add(world.charlie)
    services.grant_review(tool=tool, group=reviewers)
    page = tess_client.get(f"/admin/tools_registry/tool/{tool.pk}/reviewers/").content.decode()
    people = page[page.index('id="people"') :]
    charlie = people[people.index(">charlie<") :][:600]
    assert "through reviewers" in charlie  # inherited, not a red cross
    bob = people[people.index(">bob<") :][:600]
    assert "grant-direct" in bob
    teams = page[page.index('id="teams"') : page.index('id="people"')]
    assert ">reviewers<" in teams and "grant-direct" in teams
    # Pickers, not free text; no inline style for the CSP.
    assert '<select name="subject"' in page and 'value="user:' in page and 'value="group:' in page
    assert not re.search(r"\sstyle=", page)


def test_granting_and_revoking_with_the_pickers_is_audited(
    world: World, tess_client: Client
) -> None:
    tool = world.tools["issue_refund"]
    here = f"/admin/tools_registry/tool/{tool.pk}/reviewers/"
    response = tess_client.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "subject": f"user:{world.charlie.pk}", "permission": "review_tool", "op": "grant", "next": here},
    )  # fmt: skip
    assert response.status_code == 302 and response["Location"] == here
    assert can_review(User.objects.get(pk=world.charlie.pk), tool)
    [added] = events("grant.added", tool_name="issue_refund", data__user="charlie")
    assert added.actor_label == "tess" and added.data["user"] == "charlie"

    tess_client.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "subject": f"user:{world.charlie.pk}", "permission": "review_tool", "op": "revoke"},
    )  # fmt: skip
    assert not can_review(User.objects.get(pk=world.charlie.pk), tool)
    [removed] = events("grant.removed", tool_name="issue_refund", data__user="charlie")
    assert removed.actor_label == "tess"


def test_the_page_per_person_shows_every_tool(world: World, tess_client: Client) -> None:
    team = Group.objects.create(name="refunds")
    team.user_set.add(world.charlie)
    services.grant(tool=world.tools["issue_refund"], permission="reveal_tool_arguments", group=team)
    page = tess_client.get(
        f"/admin/tools_registry/tool/scopes/?subject=user:{world.charlie.pk}"
    ).content.decode()
    row = page[page.index(">issue_refund<") :][:1500]
    assert "through refunds" in row
    assert page.count('<tr><th scope="row">') == len(world.tools)
    team_page = tess_client.get(f"/admin/tools_registry/tool/scopes/?subject=group:{team.pk}")
    assert team_page.status_code == 200
    assert (
        tess_client.get("/admin/tools_registry/tool/scopes/?subject=user:999999").status_code == 404
    )


def test_guardian_pages_are_for_superusers_only(
    world: World, tess_client: Client, admin_client: Client
) -> None:
    tool = world.tools["send_email"]
    change = tess_client.get(f"/admin/tools_registry/tool/{tool.pk}/change/").content.decode()
    assert f"/admin/tools_registry/tool/{tool.pk}/reviewers/" in change
    assert "/permissions/" not in change
    assert tess_client.get(f"/admin/tools_registry/tool/{tool.pk}/permissions/").status_code == 403
    assert admin_client.get(f"/admin/tools_registry/tool/{tool.pk}/permissions/").status_code == 200


def test_an_id_that_is_no_tool_is_not_found(admin_client: Client) -> None:
    for odd in ("abc", "1.5", "99999999999999999999", "%00"):
        assert admin_client.get(f"/admin/tools_registry/tool/{odd}/reviewers/").status_code == 404


def test_an_id_that_is_no_tool_person_or_team_on_guardians_pages_is_not_found(
    world: World, admin_client: Client
) -> None:
    """Guardian looks the ids up as they come: one that is no number was a 500."""
    tool = world.tools["send_email"]
    for odd in ("abc", "1.5", "99999999999999999999", "\u00b2"):
        for url in (
            f"/admin/tools_registry/tool/{odd}/permissions/",
            f"/admin/tools_registry/tool/{odd}/permissions/user-manage/{world.bob.pk}/",
            f"/admin/tools_registry/tool/{tool.pk}/permissions/user-manage/{odd}/",
            f"/admin/tools_registry/tool/{tool.pk}/permissions/group-manage/{odd}/",
        ):
            assert admin_client.get(url).status_code == 404, url


@pytest.mark.parametrize("digit", ["\u00b2", "\u0663"])  # superscript two, Arabic-Indic three
def test_unicode_digits_for_a_person_team_or_tool_are_not_found(
    world: World, tess_client: Client, digit: str
) -> None:
    """str.isdigit admits them and int() refuses some: they were 500s."""
    for subject in (f"user:{digit}", f"group:{digit}"):
        page = tess_client.get("/admin/tools_registry/tool/scopes/", {"subject": subject})
        assert page.status_code == 404
    changed = tess_client.post(
        "/admin/tools_registry/tool/scopes/change/",
        {
            "tool": digit,
            "permission": "review_tool",
            "op": "grant",
            "subject": f"user:{world.charlie.pk}",
        },
    )
    assert changed.status_code == 404


def test_a_viewer_cannot_change_grants(world: World) -> None:
    viewer = User.objects.create_user("vera", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_tool"))
    client = Client()
    client.force_login(viewer)
    tool = world.tools["send_email"]
    assert client.get(f"/admin/tools_registry/tool/{tool.pk}/reviewers/").status_code == 200
    refused = client.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "subject": f"user:{viewer.pk}", "permission": "review_tool", "op": "grant"},
    )  # fmt: skip
    assert refused.status_code == 403


def test_branding_favicon_sensitive_picker_and_pretty_schema(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["update_customer"]
    page = admin_client.get(f"/admin/tools_registry/tool/{tool.pk}/change/").content.decode()
    assert "Countersign administration" in page and "Django administration" not in page
    assert 'rel="icon" href="/static/favicon.svg"' in page
    assert 'type="checkbox" name="sensitive_fields"' in page
    assert 'value="customer_id"' in page or 'name="sensitive_fields" value=' in page
    assert '<pre class="schema-pretty">{\n  &quot;' in page


def test_a_person_named_by_an_email_address_is_named_in_their_grants_events(
    world: World,
) -> None:
    """With SSO naming people by e-mail, the detectors masked the name in grant and team
    events (an auditor could not tell who was given a grant) while the actor's column kept
    it in clear: an account's own name is kept as the actor column keeps it."""
    dana = User.objects.create_user("dana@example.com", "dana@example.com", "pw")
    tool = world.tools["send_email"]
    services.grant_review(tool=tool, user=dana, granted_by=world.alice)
    services.revoke_review(tool=tool, user=dana, revoked_by=world.alice)
    team = Group.objects.create(name="mail-reviewers")
    dana.groups.add(team)
    [added] = events("grant.added", tool_name="send_email", data__user="dana@example.com")
    [removed] = events("grant.removed", tool_name="send_email", data__user="dana@example.com")
    [joined] = events("auth.groups_changed", data__groups=["mail-reviewers"])
    assert joined.data["users"] == ["dana@example.com"]
    # Elsewhere in an event's data an address is still masked.
    from audit.log import record

    other = record(action="grant.added", data={"user": "x", "note": "write to eve@example.com"})
    assert "eve@example.com" not in str(other.data)
    assert added.pk and removed.pk


def test_an_agents_owner_named_by_an_email_address_is_named_in_its_events(world: World) -> None:
    erin = User.objects.create_user("erin@example.com", "erin@example.com", "pw")
    world.agent.owner = erin
    services.save_agent(agent=world.agent, changed_by=world.alice)
    [updated] = events("agent.updated")
    assert updated.data["after"]["owner"] == "erin@example.com"
    assert updated.data["before"]["owner"] == "alice"


@pytest.mark.parametrize("permission", ["review_tool", "reveal_tool_arguments"])
def test_a_tool_admin_grants_nothing_to_themselves_nor_to_their_team(
    world: World, tess_client: Client, permission: str
) -> None:
    """A tool admin who is not a superuser grants reviewers, never themselves: a grant of
    their own (or their team's) would let them decide, or unmask, calls they administer.
    The page says why; the grant service refuses it whoever calls it."""
    tess = User.objects.get(username="tess")
    team = Group.objects.create(name="tess-team")
    team.user_set.add(tess)
    tool = world.tools["issue_refund"]
    here = f"/admin/tools_registry/tool/{tool.pk}/reviewers/"
    for subject, name in ((f"user:{tess.pk}", "tess"), (f"group:{team.pk}", "tess-team")):
        refused = tess_client.post(
            "/admin/tools_registry/tool/scopes/change/",
            {"tool": tool.pk, "subject": subject, "permission": permission, "op": "grant", "next": here},
            follow=True,
        )  # fmt: skip
        assert refused.redirect_chain == [(here, 302)], subject
        page = refused.content.decode()
        said = f"{name} may not {PERMISSION_VERBS[permission]} issue_refund: Nobody grants "
        assert capfirst(said) + "themselves, or a team they are in, a tool." in page
    assert not services.current_permissions(tool=tool, user=tess)
    assert not services.current_permissions(tool=tool, group=team)
    assert not events("grant.added", actor_label="tess")
    with pytest.raises(PermissionDenied):  # the service's door, whoever calls it
        services.grant(tool=tool, permission=permission, user=tess, granted_by=tess)
    # Another person or team is still theirs to grant, and their own grant theirs to drop.
    granted = tess_client.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "subject": f"user:{world.charlie.pk}", "permission": permission, "op": "grant"},
    )  # fmt: skip
    assert granted.status_code == 302
    assert services.current_permissions(tool=tool, user=world.charlie) == {permission}
    services.grant(tool=tool, permission=permission, user=tess)
    dropped = tess_client.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "subject": f"user:{tess.pk}", "permission": permission, "op": "revoke"},
    )  # fmt: skip
    assert dropped.status_code == 302
    assert not services.current_permissions(tool=tool, user=tess)


def test_a_superuser_may_grant_themselves(world: World, admin_client: Client) -> None:
    """A superuser reviews every tool already: a grant of their own widens nothing."""
    root = User.objects.get(username="root")
    tool = world.tools["issue_refund"]
    granted = admin_client.post(
        "/admin/tools_registry/tool/scopes/change/",
        {"tool": tool.pk, "subject": f"user:{root.pk}", "permission": "review_tool", "op": "grant"},
    )  # fmt: skip
    assert granted.status_code == 302
    assert services.current_permissions(tool=tool, user=root) == {"review_tool"}
