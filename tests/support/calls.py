"""Calls in every state of the exactly-once protocol, made through the services: pending,
approved (its task sent on commit), claimed, with an aged lease, unknown."""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import F
from django.utils import timezone

from approvals.execution.claim import Claim, claim_call
from approvals.execution.finish import expire_lease
from approvals.models import Status, ToolCall
from approvals.services.calls import create_call
from approvals.services.decisions import confirmation_phrase, decide
from sandbox.models import Payment
from tests.conftest import World
from tools_registry import services as registry_services

_serial = itertools.count(1)


def email_arguments(n: int | None = None) -> dict[str, Any]:
    n = next(_serial) if n is None else n
    return {"to": f"customer{n}@example.com", "subject": f"Update {n}", "body": "Hello."}


def refund_arguments(n: int | None = None) -> dict[str, Any]:
    n = next(_serial) if n is None else n
    return {"payment_id": "pay_chaos", "amount_cents": 1, "currency": "usd", "reason": f"r{n}"}


def delete_arguments(n: int | None = None) -> dict[str, Any]:
    n = next(_serial) if n is None else n
    return {"customer_id": f"cus_gone{n:04d}", "reason": "The customer asked to be forgotten."}


ARGUMENTS = {
    "send_email": email_arguments,
    "issue_refund": refund_arguments,
    "delete_customer": delete_arguments,
}


def second_reviewer(world: World) -> User:
    """Destructive calls need two distinct approvals: dora reviews every tool too."""
    dora, created = User.objects.get_or_create(
        username="dora", defaults={"email": "dora@example.com"}
    )
    if created:
        for tool in world.tools.values():
            registry_services.grant_review(tool=tool, user=dora)
    return dora


def ensure_refundable() -> None:
    """A payment large enough for every refund a test makes (1 cent each)."""
    Payment.objects.get_or_create(
        payment_id="pay_chaos", defaults={"amount_cents": 10_000_000, "currency": "usd"}
    )


def pending_call(
    world: World, tool: str = "send_email", arguments: dict[str, Any] | None = None
) -> ToolCall:
    return create_call(
        agent=world.agent,
        tool=world.tools[tool],
        arguments=arguments or ARGUMENTS[tool](),
        session_id="executor-tests",
        request_key=uuid.uuid4().hex,
    )


def approved_call(
    world: World, tool: str = "send_email", arguments: dict[str, Any] | None = None
) -> ToolCall:
    """A call approved through the decision service (its task is sent on commit)."""
    if tool == "issue_refund":
        ensure_refundable()
    call = pending_call(world, tool, arguments)
    # A destructive approval is typed out by a reviewer who signed in just now.
    confirm = {"confirmation": confirmation_phrase(call), "authenticated_at": timezone.now()}
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve", **confirm)
    if call.approvals_required > 1:
        decide(call_id=call.pk, reviewer=second_reviewer(world), verdict="approve", **confirm)
    call.refresh_from_db()
    assert call.status == Status.APPROVED
    return call


def received_read(world: World) -> ToolCall:
    """A read as intake stores it before running it in the agent's request."""
    return create_call(
        agent=world.agent,
        tool=world.tools["get_customer"],
        arguments={"customer_id": "cus_0001"},
        session_id="s",
        request_key=uuid.uuid4().hex,
    )


def claimed_call(world: World, tool: str = "send_email") -> tuple[ToolCall, Claim]:
    call = approved_call(world, tool)
    claim = claim_call(call_id=call.pk)
    assert claim is not None
    call.refresh_from_db()
    return call, claim


def age_lease(call: ToolCall, seconds: float = 3600) -> None:
    """Move the lease into the past, as if the worker had been silent that long."""
    ToolCall.objects.filter(pk=call.pk).update(
        lease_until=F("lease_until") - timedelta(seconds=seconds)
    )


def unknown_call(world: World, tool: str = "send_email") -> ToolCall:
    """A call whose worker went silent: the sweep found its lease expired."""
    call, _ = claimed_call(world, tool)
    assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN
    return call
