"""Fixtures of the approvals tests: calls made straight through the intake service, a
second reviewer through the reviewers team (dave), another reviewer of every tool (dora, for
destructive calls' second approval), and bob's signed-in client."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from approvals.models import ToolCall
from approvals.services.calls import create_call
from tests.conftest import World
from tests.support.calls import second_reviewer
from tools_registry import services as registry_services

ARGUMENTS: dict[str, dict[str, Any]] = {
    "send_email": {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."},
    "update_customer": {
        "customer_id": "cus_0001",
        "changes": {"email": "ada.l@example.com", "plan": "pro"},
    },
    "issue_refund": {
        "payment_id": "pay_0001",
        "amount_cents": 1200,
        "currency": "usd",
        "reason": "Charged twice.",
    },
    "delete_customer": {"customer_id": "cus_0003", "reason": "The customer asked to be forgotten."},
}


def make_call(
    world: World,
    tool: str = "send_email",
    *,
    arguments: dict[str, Any] | None = None,
    session_id: str = "run-1",
    on_behalf_of: str = "",
    end_user_roles: tuple[str, ...] = (),
    end_user_source: str = "",
    reasoning: str = "The customer asked for it.",
    token_cost: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    agent: Any = None,
) -> ToolCall:
    call = create_call(
        agent=agent or world.agent,
        tool=world.tools[tool],
        arguments=arguments if arguments is not None else ARGUMENTS[tool],
        session_id=session_id,
        request_key=uuid.uuid4().hex,
        on_behalf_of=on_behalf_of,
        end_user_roles=end_user_roles,
        end_user_source=end_user_source,
        reasoning=reasoning,
        token_cost=token_cost,
    )
    if created_at is not None:
        # Test set-up only: pretend the call arrived earlier (its expiry moves with it).
        shift = created_at - call.created_at
        ToolCall.objects.filter(pk=call.pk).update(
            created_at=created_at, expires_at=call.expires_at + shift
        )
        call.refresh_from_db()
    return call


def with_free_form_names(world: World) -> None:
    """send_email with a free-form map beside its fields (as an imported tool may have)."""
    tool = world.tools["send_email"]
    schema = dict(tool.input_schema)
    schema["properties"] = {
        **schema["properties"],
        "names": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    tool.input_schema = schema
    tool.save()


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shown_state(client: Client, call: ToolCall) -> str:
    """The digest of the record state the call's page shows, which its decision form sends
    with a verdict (empty for a tool that shows none, or once the call no longer waits and
    the page has no decision form): an approval without it is refused."""
    page = client.get(f"/approvals/{call.pk}/")
    assert page.status_code == 200, page
    found = re.search(r'name="state_hash" value="([^"]*)"', page.content.decode())
    return found.group(1) if found else ""


def htmx(client: Client) -> dict[str, str]:
    return {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def dave(world: World) -> User:
    """A second reviewer of every demo tool, through the reviewers team (a group grant)."""
    user = User.objects.create_user("dave", "dave@example.com", "pw-dave")
    team = Group.objects.get(name="reviewers")
    user.groups.add(team)
    for tool in world.tools.values():
        registry_services.grant_review(tool=tool, group=team)
    return user


@pytest.fixture
def bob_client(world: World) -> Client:
    return login(world.bob)


@pytest.fixture
def dora(world: World) -> User:
    """Destructive calls need two distinct approvals: dora reviews every tool too."""
    return second_reviewer(world)
