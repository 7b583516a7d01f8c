"""Reviewers x tools: the queue, the detail page and the decision all respect the grants.

Everything goes through HTTP (the reviewer pages' markup may change; call ids in the queue
and status codes will not). The cast:

- uma: a direct grant on send_email
- gina: a team grant (refunds) on issue_refund and a direct grant on update_customer
- rex: his direct grant on delete_customer and his team's (ops) grant on update_customer
  were both revoked
- vera: may reveal send_email's arguments, but not review it
- sue: a superuser
- audrey: an auditor holding the model-wide review_tool permission and view permissions,
  which must not leak any tool
- charlie: no grant at all
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from approvals.models import Decision, Status, ToolCall, Verdict
from tests.conftest import World
from tools_registry import services

TOOLS = ["send_email", "update_customer", "issue_refund", "delete_customer"]

ARGUMENTS = {
    "send_email": {"to": "ada@example.com", "subject": "Refund", "body": "On its way."},
    "update_customer": {"customer_id": "cus_0001", "changes": {"plan": "pro"}},
    "issue_refund": {
        "payment_id": "pay_0001",
        "amount_cents": 500,
        "currency": "usd",
        "reason": "Late delivery.",
    },
    "delete_customer": {"customer_id": "cus_0002", "reason": "Asked to be forgotten."},
}

MAY_REVIEW = {
    "uma": {"send_email"},
    "gina": {"issue_refund", "update_customer"},
    "rex": set(),
    "vera": set(),
    "sue": set(TOOLS),
    "audrey": set(),
    "charlie": set(),
}


@dataclass
class Cast:
    clients: dict[str, Client]
    users: dict[str, User]


def _cast(world: World) -> Cast:
    t = world.tools
    users = {
        name: User.objects.create_user(name, f"{name}@example.com")
        for name in MAY_REVIEW
        if name != "charlie"
    }
    users["charlie"] = world.charlie
    users["sue"].is_superuser = True
    users["sue"].save()

    services.grant_review(tool=t["send_email"], user=users["uma"])

    refunds = Group.objects.create(name="refunds")
    users["gina"].groups.add(refunds)
    services.grant_review(tool=t["issue_refund"], group=refunds)
    services.grant_review(tool=t["update_customer"], user=users["gina"])

    ops = Group.objects.create(name="ops")
    users["rex"].groups.add(ops)
    services.grant_review(tool=t["delete_customer"], user=users["rex"])
    services.grant_review(tool=t["update_customer"], group=ops)
    services.revoke_review(tool=t["delete_customer"], user=users["rex"])
    services.revoke_review(tool=t["update_customer"], group=ops)

    services.grant(tool=t["send_email"], permission="reveal_tool_arguments", user=users["vera"])

    auditors = Group.objects.create(name="auditors-matrix")
    for codename in ("review_tool", "view_tool", "view_toolcall", "view_decision"):
        auditors.permissions.add(Permission.objects.get(codename=codename))
    users["audrey"].groups.add(auditors)

    clients = {}
    for name, user in users.items():
        clients[name] = Client()
        clients[name].force_login(user)
    return Cast(clients=clients, users=users)


def _submit(world: World, tool: str, session: str) -> ToolCall:
    response = world.api().submit(
        {"tool": tool, "arguments": ARGUMENTS[tool], "session_id": session}
    )
    assert response.status_code == 202, response.json()
    return ToolCall.objects.get(pk=response.json()["id"])


REFUSED = (403, 404)


def test_every_list_detail_and_decision_respects_the_grants(world: World) -> None:
    cast = _cast(world)
    calls = {tool: _submit(world, tool, f"matrix-{tool}") for tool in TOOLS}

    for name, client in cast.clients.items():
        queue = client.get("/approvals/")
        assert queue.status_code in (200, *REFUSED), name
        page = queue.content.decode() if queue.status_code == 200 else ""
        for tool, call in calls.items():
            allowed = tool in MAY_REVIEW[name]
            assert (str(call.pk) in page) is allowed, f"{name} / {tool} in the queue"
            detail = client.get(f"/approvals/{call.pk}/")
            if allowed:
                assert detail.status_code == 200, f"{name} / {tool} detail"
            else:
                assert detail.status_code in REFUSED, f"{name} / {tool} detail"

    # Refused decisions first: none of them may leave a trace.
    for name, client in cast.clients.items():
        for tool, call in calls.items():
            if tool in MAY_REVIEW[name]:
                continue
            response = client.post(
                f"/approvals/{call.pk}/decide/",
                {"verdict": "reject", "comment": "No.", "arguments_hash": call.arguments_hash},
            )
            assert response.status_code in REFUSED, f"{name} / {tool} decision"
    for call in calls.values():
        call.refresh_from_db()
        assert call.status == Status.PENDING
        assert not Decision.objects.filter(call=call).exists()

    # Each allowed pair decides on a call of its own, so one verdict does not end another's.
    for name, client in cast.clients.items():
        for tool in sorted(MAY_REVIEW[name]):
            call = _submit(world, tool, f"matrix-{name}-{tool}")
            response = client.post(
                f"/approvals/{call.pk}/decide/",
                {"verdict": "reject", "comment": "Not now.", "arguments_hash": call.arguments_hash},
            )
            assert response.status_code not in REFUSED, f"{name} / {tool} decision"
            decision = Decision.objects.get(call=call)
            assert (decision.reviewer.username, decision.verdict) == (name, Verdict.REJECT)


@pytest.fixture
def reviewer(world: World) -> tuple[User, Client]:
    user = User.objects.create_user("rita", "rita@example.com")
    client = Client()
    client.force_login(user)
    return user, client


def test_a_revoked_grant_stops_access_on_the_next_request(
    world: World, reviewer: tuple[User, Client]
) -> None:
    user, client = reviewer
    call = _submit(world, "issue_refund", "revoke-1")
    services.grant_review(tool=world.tools["issue_refund"], user=user)
    assert str(call.pk) in client.get("/approvals/").content.decode()
    assert client.get(f"/approvals/{call.pk}/").status_code == 200

    services.revoke_review(tool=world.tools["issue_refund"], user=user)
    queue = client.get("/approvals/")
    assert str(call.pk) not in queue.content.decode()
    assert client.get(f"/approvals/{call.pk}/").status_code in REFUSED
    response = client.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "comment": "", "arguments_hash": call.arguments_hash},
    )
    assert response.status_code in REFUSED
    assert not Decision.objects.filter(call=call).exists()


def test_leaving_a_team_ends_its_grants(world: World, reviewer: tuple[User, Client]) -> None:
    user, client = reviewer
    team = Group.objects.create(name="payments")
    services.grant_review(tool=world.tools["issue_refund"], group=team)
    user.groups.add(team)
    call = _submit(world, "issue_refund", "team-1")
    assert str(call.pk) in client.get("/approvals/").content.decode()
    user.groups.remove(team)
    assert str(call.pk) not in client.get("/approvals/").content.decode()
    assert client.get(f"/approvals/{call.pk}/").status_code in REFUSED
