"""A call that arrives while its tool's policy is being changed is screened under one policy,
the one in force when it is stored: it waits for the change under way, then reads the new
rules. Real threads, each with its own PostgreSQL connection."""

from __future__ import annotations

import pytest

from approvals.models import Status, ToolCall
from tests.conftest import World
from tests.support.uncommitted import uncommitted
from tools_registry import services as registry_services
from tools_registry.models import Tool

pytestmark = pytest.mark.django_db(transaction=True)

SMALL_REFUND = {
    "tool": "issue_refund",
    "session_id": "s-policy-race",
    "arguments": {
        "payment_id": "pay_0001",
        "amount_cents": 1250,
        "currency": "usd",
        "reason": "Charged twice.",
    },
}
APPROVE_SMALL = [{"when": "args.amount_cents <= 5000", "then": "approve"}]
REFUSE_ALL = [{"when": "true", "then": "refuse", "note": "Refunds are paused."}]


def set_rules(world: World, rules: list[dict[str, object]]) -> Tool:
    return registry_services.update_policy(
        tool=Tool.objects.get(name="issue_refund"), changes={"rules": rules}, changed_by=world.alice
    )


def test_a_call_arriving_while_a_refusal_is_saved_is_refused_not_approved_by_the_old_rule(
    live_world: World,
) -> None:
    """An admin pauses refunds (a rule refusing them all, in place of one approving small
    ones) while a small refund arrives. Its intake waited for the admin's save (the new call
    refers to the tool's row, which the save holds), then stored it as the rules it had read
    before said: approved by a rule the policy no longer had, to run with no reviewer once
    the pause was in force, under a policy version that was already gone."""
    world = live_world
    before = set_rules(world, APPROVE_SMALL)

    with uncommitted(lambda: set_rules(world, REFUSE_ALL), commits_after=1.0):
        response = world.api().submit(SMALL_REFUND)

    assert response.status_code == 403, response.content
    assert response.json()["error"]["code"] == "refused_by_policy"
    assert response.json()["error"]["message"] == "Refunds are paused."
    assert not ToolCall.objects.filter(tool__name="issue_refund").exists()
    assert Tool.objects.get(name="issue_refund").policy_version == before.policy_version + 1


def test_a_call_arriving_while_a_quorum_is_raised_is_bound_to_the_new_policy(
    live_world: World,
) -> None:
    """The other way round: a rule asking two reviewers is being saved; the call that waited
    for it needs two, and names the version that asks them."""
    world = live_world
    set_rules(world, [])
    two = [{"when": "args.amount_cents > 1000", "then": "require", "approvals": 2}]

    with uncommitted(lambda: set_rules(world, two), commits_after=1.0):
        response = world.api().submit(SMALL_REFUND)

    assert response.status_code == 202, response.content
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert (call.status, call.approvals_required) == (Status.PENDING, 2)
    assert call.policy["version"] == Tool.objects.get(name="issue_refund").policy_version
