"""Revealing masked arguments: a grant, a reason, an audit event; never on GET."""

from __future__ import annotations

from django.test import Client
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from tests.approvals.conftest import login, make_call
from tests.conftest import World
from tools_registry.permissions import REVEAL_PERMISSION

SECRET_ARGUMENTS = {
    "customer_id": "cus_0001",
    "changes": {"email": "ada.l@example.com", "phone": "+44 20 7946 0001"},
}


def reveal(client: Client, call, reason: str):  # type: ignore[no-untyped-def]
    return client.post(f"/approvals/{call.pk}/reveal/", {"reason": reason}, HTTP_HX_REQUEST="true")


def test_a_granted_reviewer_sees_the_values_after_giving_a_reason_and_it_is_audited(
    world: World, bob_client
) -> None:
    assign_perm(REVEAL_PERMISSION, world.bob, world.tools["update_customer"])
    call = make_call(world, "update_customer", arguments=SECRET_ARGUMENTS)
    page = bob_client.get(f"/approvals/{call.pk}/").content.decode()
    assert 'name="reason"' in page and "ada.l@example.com" not in page

    response = reveal(bob_client, call, "Check the new address against ticket 4411.")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="arguments"')
    assert "ada.l@example.com" in body and "+44 20 7946 0001" in body
    assert "revealed, audited" in body
    assert "no-store" in response["Cache-Control"]
    event = AuditEvent.objects.get(call_id=call.pk, action="call.arguments_revealed")
    assert event.actor_label == "bob"
    assert event.data["reason"] == "Check the new address against ticket 4411."
    assert event.data["sensitive_fields"] == ["changes.email", "changes.phone"]
    assert "ada.l@example.com" not in str(event.data)
    # Nothing stays revealed: the next look at the page is masked again.
    assert "ada.l@example.com" not in bob_client.get(f"/approvals/{call.pk}/").content.decode()


def test_a_reason_is_required(world: World, bob_client) -> None:
    assign_perm(REVEAL_PERMISSION, world.bob, world.tools["update_customer"])
    call = make_call(world, "update_customer", arguments=SECRET_ARGUMENTS)
    for reason in ("", "   ", "because"):
        body = reveal(bob_client, call, reason).content.decode()
        assert "ada.l@example.com" not in body
        assert 'role="alert"' in body
    assert not AuditEvent.objects.filter(action="call.arguments_revealed").exists()


def test_a_reviewer_without_the_reveal_grant_is_refused(world: World, bob_client) -> None:
    assign_perm(REVEAL_PERMISSION, world.bob, world.tools["send_email"])  # another tool
    call = make_call(world, "update_customer", arguments=SECRET_ARGUMENTS)
    response = reveal(bob_client, call, "I would like to see it please.")
    assert response.status_code == 403
    assert "ada.l@example.com" not in response.content.decode()
    assert not AuditEvent.objects.filter(action="call.arguments_revealed").exists()


def test_a_reveal_grant_without_review_is_not_enough(world: World) -> None:
    assign_perm(REVEAL_PERMISSION, world.charlie, world.tools["update_customer"])
    call = make_call(world, "update_customer", arguments=SECRET_ARGUMENTS)
    assert reveal(login(world.charlie), call, "I would like to see it please.").status_code == 403


def test_revealing_is_post_only_and_needs_the_csrf_token(world: World) -> None:
    assign_perm(REVEAL_PERMISSION, world.bob, world.tools["update_customer"])
    call = make_call(world, "update_customer", arguments=SECRET_ARGUMENTS)
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.bob)
    assert client.get(f"/approvals/{call.pk}/reveal/?reason=curious+about+it").status_code == 405
    assert (
        client.post(f"/approvals/{call.pk}/reveal/", {"reason": "curious about it"}).status_code
        == 403
    )
    assert not AuditEvent.objects.filter(action="call.arguments_revealed").exists()


def test_a_reason_that_quotes_a_revealed_value_is_masked_in_the_trail(
    world: World, bob_client
) -> None:
    """Having seen a value once, a reviewer may quote it in the reason of their next look;
    the trail masks it there as in their comments and notes."""
    tool = world.tools["update_customer"]
    tool.sensitive_fields = [*tool.sensitive_fields, "changes.name"]
    tool.save()
    assign_perm(REVEAL_PERMISSION, world.bob, tool)
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world, "update_customer", arguments={"customer_id": "cus_0001", "changes": {"name": name}}
    )
    assert name in reveal(bob_client, call, "Check it against ticket 4411.").content.decode()
    again = reveal(bob_client, call, f"Is {name} spelt as in ticket 4411?")
    assert again.status_code == 200 and name in again.content.decode()
    reasons = [
        e.data["reason"]
        for e in AuditEvent.objects.filter(call_id=call.pk, action="call.arguments_revealed")
    ]
    assert len(reasons) == 2 and all(name not in reason for reason in reasons), reasons
    assert any(reason.startswith("Is [masked:field:") for reason in reasons), reasons
