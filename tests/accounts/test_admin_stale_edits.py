"""A person's or a team's page saved after someone else changed them: the Django admin
posts every field the page showed, so what the page held would write the other change back
unseen (an account deactivated, active again; a permission taken away, given back). It is
refused instead (``core.admin_saves.ChangedMeanwhileRefused``)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from tests.conftest import World, events
from tests.support.uncommitted import uncommitted
from tests.tools_registry.conftest import admin_form_data

pytestmark = pytest.mark.usefixtures("world")


def _person_page(response: object) -> dict[str, object]:
    """What the person's page posts back unchanged: its dates in two boxes each."""
    data = admin_form_data(response)
    for name in ("date_joined", "last_login"):
        if (value := data.pop(name, None)) is not None:
            data[f"{name}_0"], data[f"{name}_1"] = value.date(), value.time()
    return data


def _refused(response: object) -> bool:
    form = response.context["adminform"].form  # type: ignore[attr-defined]
    return "changed since you opened" in str(form.non_field_errors())


def test_a_persons_page_loaded_before_a_deactivation_does_not_activate_them_again(
    world: World, admin_client: Client
) -> None:
    """Root opens bob's page to correct his e-mail address. Meanwhile alice, on her own
    page, deactivates bob (he left) and takes him out of the reviewers team. Root saves: the
    page still held bob active and in the team, and the admin posted both as root's: bob
    could sign in, and approve refunds, again."""
    reviewers = Group.objects.get_or_create(name="reviewers")[0]
    world.bob.groups.add(reviewers)
    url = f"/admin/auth/user/{world.bob.pk}/change/"
    shown = admin_client.get(url)
    page = _person_page(shown)
    assert page["is_active"] is True and page["groups"] == [reviewers.pk]
    # Alice's change, made through the same page, opened after root's.
    hers = _person_page(admin_client.get(url))
    del hers["is_active"]  # an unticked box is not posted
    response = admin_client.post(url, {**hers, "groups": []})
    assert response.status_code == 302, response.context["adminform"].form.errors
    response = admin_client.post(url, {**page, "email": "bob@corp.example"})
    assert response.status_code == 200
    assert _refused(response)
    world.bob.refresh_from_db()
    assert (world.bob.is_active, world.bob.email) == (False, "bob@example.com")
    assert not world.bob.groups.exists()
    assert len(events("user.access_changed")) == 1
    # Reloaded, the page shows him deactivated and out of the team; root's edit keeps both.
    page = _person_page(admin_client.get(url))
    assert admin_client.post(url, {**page, "email": "bob@corp.example"}).status_code == 302
    world.bob.refresh_from_db()
    assert (world.bob.is_active, world.bob.email) == (False, "bob@corp.example")
    assert not world.bob.groups.exists()
    assert 'type="hidden" name="shown_state"' in shown.content.decode()


def test_a_persons_page_opened_before_they_signed_in_keeps_their_last_sign_in(
    world: World, admin_client: Client
) -> None:
    """Root opens bob's page; bob signs in; root saves an e-mail change. The page showed
    the sign-in before: it did not post it back, so an auditor looking for dormant accounts
    sees the one bob just made."""
    url = f"/admin/auth/user/{world.bob.pk}/change/"
    page = _person_page(admin_client.get(url))
    assert "last_login_0" not in page
    signing_in = Client().post("/login/", {"username": "bob", "password": "pw-bob"})
    assert signing_in.status_code == 302, signing_in.content
    world.bob.refresh_from_db()
    signed_in = world.bob.last_login
    assert signed_in is not None
    response = admin_client.post(url, {**page, "email": "bob@corp.example"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    world.bob.refresh_from_db()
    assert (world.bob.email, world.bob.last_login) == ("bob@corp.example", signed_in)


def test_a_teams_page_loaded_before_a_permission_was_taken_away_does_not_give_it_back(
    world: World, admin_client: Client
) -> None:
    """Root opens the support team's page to rename it. Meanwhile, on a page opened after
    his, the team loses its permission to change tools (its members granted themselves
    reviews). Root saves: the page still held the permission, and the admin gave it back."""
    change_tool = Permission.objects.get(codename="change_tool")
    team = Group.objects.create(name="support")
    team.permissions.add(change_tool)
    url = f"/admin/auth/group/{team.pk}/change/"
    shown = admin_client.get(url)
    page = admin_form_data(shown)
    hers = admin_form_data(admin_client.get(url))
    assert admin_client.post(url, {**hers, "permissions": []}).status_code == 302
    response = admin_client.post(url, {**page, "name": "support-eu"})
    assert response.status_code == 200
    assert _refused(response)
    team.refresh_from_db()
    assert (team.name, list(team.permissions.all())) == ("support", [])
    page = admin_form_data(admin_client.get(url))
    assert admin_client.post(url, {**page, "name": "support-eu"}).status_code == 302
    team.refresh_from_db()
    assert (team.name, list(team.permissions.all())) == ("support-eu", [])
    assert 'type="hidden" name="shown_state"' in shown.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_persons_page_saved_as_their_password_changes_does_not_set_the_old_one_back(
    world: World, admin_client: Client
) -> None:
    """Root saves bob's page (a new e-mail address) as bob's new password is being set (his
    old one leaked). Root's save read bob's row before that change committed, waited for it
    at the row's lock, found what the page showed unchanged (the password was not part of
    it), and wrote the whole row as read: the leaked password worked again, and the page
    said it had saved an e-mail address. It is refused instead."""
    url = f"/admin/auth/user/{world.bob.pk}/change/"
    page = _person_page(admin_client.get(url))

    def new_password() -> None:
        bob = User.objects.get(pk=world.bob.pk)
        bob.set_password("a-new-passphrase-for-bob")
        bob.save(update_fields=["password"])

    with uncommitted(new_password):
        response = admin_client.post(url, {**page, "email": "bob@corp.example"})
    assert response.status_code == 200
    assert _refused(response)
    bob = User.objects.get(pk=world.bob.pk)
    assert bob.check_password("a-new-passphrase-for-bob")
    assert bob.email == "bob@example.com"
    # Reloaded, the page saves, and the new password stays.
    page = _person_page(admin_client.get(url))
    assert admin_client.post(url, {**page, "email": "bob@corp.example"}).status_code == 302
    bob = User.objects.get(pk=world.bob.pk)
    assert (bob.check_password("a-new-passphrase-for-bob"), bob.email) == (True, "bob@corp.example")
