"""Edit, then approve: a reviewer's correction is checked like a new call, resets the other
approvals, keeps the originals in the audit trail, runs once with the corrected arguments,
and the agent is told."""

from __future__ import annotations

import json
import re
from datetime import UTC, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals import display
from approvals.execution import runner
from approvals.models import Status, ToolCall
from approvals.services.decisions import AlreadyVoted, DecisionRefused, TeamRequired, decide
from approvals.services.edits import narrows
from audit.masking import keyed_digest
from gateway.mcp import state as mcp_state
from gateway.responses import approved_by
from sandbox.models import OutboxMessage
from tests.approvals.conftest import login, make_call
from tests.conftest import World, events
from tools_registry import services as registry_services

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}


def test_a_correction_runs_once_with_the_corrected_arguments_and_the_agent_is_told(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    call = make_call(world, "send_email", arguments=EMAIL)
    corrected = {**EMAIL, "body": "It is on its way; allow 5 working days."}
    with django_capture_on_commit_callbacks(execute=False):
        result = decide(
            call_id=call.pk,
            reviewer=world.bob,
            verdict="approve",
            comment="Said when.",
            shown_arguments_hash=call.arguments_hash,
            edited_arguments=corrected,
        )
    assert result.decided and result.decision.edited
    runner.execute(call.pk)
    call.refresh_from_db()
    assert call.status == Status.SUCCEEDED
    assert (call.arguments, call.arguments_edited) == (corrected, True)
    assert [m.body for m in OutboxMessage.objects.all()] == [corrected["body"]]
    (edited,) = events("call.arguments_edited", call_id=call.pk)
    assert edited.data["before"]["body"] == EMAIL["body"]
    assert edited.data["after"]["body"] == corrected["body"]
    # Keyed in the trail (guesses of a masked value cannot be tried against them).
    assert edited.data["before_hash"] != edited.data["arguments_hash"]
    assert edited.data["arguments_hash"] == keyed_digest(call.arguments_hash)
    # The agent's answer says what ran.
    body = world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert body["arguments_edited"] is True and body["arguments"] == corrected


def test_a_correction_resets_earlier_approvals(world: World, dave: Any, dora: Any) -> None:
    registry_services.update_policy(
        tool=world.tools["send_email"], changes={"approvals_required": 2}, changed_by=world.alice
    )
    world.tools["send_email"].refresh_from_db()
    call = make_call(world, "send_email", arguments=EMAIL)
    assert not decide(call_id=call.pk, reviewer=dave, verdict="approve").decided
    # dora corrects it: dave approved something else, so only her approval counts now.
    edited = decide(
        call_id=call.pk,
        reviewer=dora,
        verdict="approve",
        edited_arguments={**EMAIL, "subject": "Your refund (corrected)"},
    )
    assert (edited.approvals, edited.decided) == (1, False)
    assert events("call.arguments_edited")[0].data["approvals_reset"] == 1
    # The agent is told the same: one approval of two, not dave's as well.
    body = world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert (body["status"], body["approvals"], body["approvals_required"]) == ("pending", 1, 2)
    assert mcp_state.read(world.agent, call.pk).status_message.startswith(  # type: ignore[union-attr]
        "waiting for approval: 1 of 2 reviewers"
    )
    with pytest.raises(AlreadyVoted):
        decide(call_id=call.pk, reviewer=dora, verdict="approve")
    # dave may approve again: his first verdict was on the old arguments.
    again = decide(call_id=call.pk, reviewer=dave, verdict="approve")
    assert (again.approvals, again.decided) == (2, True)


@pytest.mark.parametrize(
    ("edited", "message"),
    [
        ({**EMAIL, "to": "not an address"}, "do not fit the tool"),
        ({**EMAIL, "cc": "x@example.com"}, "is not an argument of this tool"),
        ({"to": "ada@example.com"}, "'subject' is required"),
        (["not", "an", "object"], "must be a JSON object"),
        # Past the 50 problems an answer lists, the rest are counted, not quoted.
        ({**EMAIL, **{f"x{i:03}": 1 for i in range(60)}}, r"x049.*; and 10 more$"),
    ],
)
def test_a_correction_that_does_not_fit_is_refused_and_changes_nothing(
    world: World, edited: Any, message: str
) -> None:
    call = make_call(world, "send_email", arguments=EMAIL)
    with pytest.raises(DecisionRefused, match=message):
        decide(call_id=call.pk, reviewer=world.bob, verdict="approve", edited_arguments=edited)
    call.refresh_from_db()
    assert (call.status, call.arguments, call.arguments_edited) == (Status.PENDING, EMAIL, False)
    assert not call.decisions.exists()
    assert not events("call.arguments_edited")


def test_a_correction_a_rule_refuses_is_refused(world: World) -> None:
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={"rules": [{"when": 'args.to.endsWith("@evil.example")', "then": "refuse"}]},
        changed_by=world.alice,
    )
    world.tools["send_email"].refresh_from_db()
    call = make_call(world, "send_email", arguments=EMAIL)
    with pytest.raises(DecisionRefused, match="would be refused"):
        decide(
            call_id=call.pk,
            reviewer=world.bob,
            verdict="approve",
            edited_arguments={**EMAIL, "to": "me@evil.example"},
        )


def test_a_correction_comes_with_an_approval_only(world: World) -> None:
    call = make_call(world, "send_email", arguments=EMAIL)
    with pytest.raises(DecisionRefused, match="comes with an approval"):
        decide(
            call_id=call.pk,
            reviewer=world.bob,
            verdict="reject",
            comment="No.",
            edited_arguments={**EMAIL, "subject": "x"},
        )


def test_destructive_calls_are_never_corrected_unless_narrowing_is_allowed(
    world: World, dora: Any, settings
) -> None:
    call = make_call(world, "delete_customer")
    fresh = {"confirmation": "cus_0003", "authenticated_at": timezone.now()}
    with pytest.raises(DecisionRefused, match="cannot be corrected"):
        decide(
            call_id=call.pk,
            reviewer=world.bob,
            verdict="approve",
            edited_arguments={**call.arguments, "reason": "Shorter."},
            **fresh,
        )
    settings.APPROVALS_DESTRUCTIVE_EDITS = "narrow"
    with pytest.raises(DecisionRefused, match="may only be narrowed"):
        decide(
            call_id=call.pk,
            reviewer=world.bob,
            verdict="approve",
            edited_arguments={**call.arguments, "customer_id": "cus_0001"},
            **fresh,
        )
    assert ToolCall.objects.get(pk=call.pk).arguments["customer_id"] == "cus_0003"


@pytest.mark.parametrize(
    ("before", "after", "narrower"),
    [
        ({"ids": [1, 2, 3]}, {"ids": [1, 3]}, True),
        ({"ids": [1, 2]}, {"ids": [1, 2, 4]}, False),
        ({"amount": 500, "note": "x"}, {"amount": 200, "note": "x"}, True),
        ({"amount": 500, "note": "x"}, {"amount": 200}, False),
        ({"ids": [1], "dry_run": True}, {"ids": [1]}, False),
        ({"amount": 500}, {"amount": 700}, False),
        ({"amount": -500}, {"amount": 200}, False),
        ({"id": "cus_1"}, {"id": "cus_2"}, False),
        ({"a": {"b": [1, 1]}}, {"a": {"b": [1]}}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"flag": True}, {"flag": False}, False),
        # JSON's true is not 1 (Python's True == 1), nor false 0.
        ({"soft": True}, {"soft": 1}, False),
        ({"soft": 1}, {"soft": True}, False),
        ({"keep": False}, {"keep": 0}, False),
        ({"ids": [1, 2]}, {"ids": [True]}, False),
        ({"ids": [{"id": 1}, {"id": 2}]}, {"ids": [{"id": 2}]}, True),
    ],
)
def test_what_narrowing_means(before: Any, after: Any, narrower: bool) -> None:
    assert narrows(before, after) is narrower


def test_a_correction_is_held_to_what_its_new_rule_asks(world: World) -> None:
    """A rule reserves calls to evil.com for the finance team: bob, not in it, may not
    correct a harmless call into one of those and approve it alone."""
    Group.objects.create(name="finance")
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={
            "rules": [
                {"when": 'args.to.endsWith("@evil.com")', "then": "require", "approvals": 1,
                 "team": "finance"},
            ]
        },
        changed_by=world.alice,
    )  # fmt: skip
    call = make_call(world, "send_email", arguments=EMAIL)
    with pytest.raises(TeamRequired):
        decide(
            call_id=call.pk, reviewer=world.bob, verdict="approve",
            shown_arguments_hash=call.arguments_hash,
            edited_arguments={**EMAIL, "to": "x@evil.com"},
        )  # fmt: skip
    call.refresh_from_db()
    assert call.status == Status.PENDING and call.arguments == EMAIL  # the correction too
    assert not events("call.arguments_edited")


def test_a_correction_keeps_the_hour_the_call_arrived_at(
    world: World, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two approvals for what arrives outside working hours: a correction made once they
    have begun is of the same call, which arrived before; one approval is not enough."""
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={"rules": [{"when": '"outside_hours" in signals', "then": "require", "approvals": 2}]},
        changed_by=world.alice,
    )  # fmt: skip
    world.tools["send_email"].refresh_from_db()
    settings.COUNTERSIGN_WORKING_HOURS = "08:00-19:00"
    settings.COUNTERSIGN_WORKING_DAYS = "mon-sun"
    today = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monkeypatch.setattr(timezone, "now", lambda: today + timedelta(hours=7, minutes=40))
    call = make_call(world, "send_email", arguments=EMAIL)
    assert call.approvals_required == 2
    monkeypatch.setattr(timezone, "now", lambda: today + timedelta(hours=8, minutes=5))
    result = decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash,
        edited_arguments={**EMAIL, "body": "It is on its way, today."},
    )  # fmt: skip
    assert (result.approvals, result.decided) == (1, False)
    call.refresh_from_db()
    assert call.status == Status.PENDING and call.approvals_required == 2
    assert "outside_hours" in [s["code"] for s in call.signals]


def test_correcting_back_to_arguments_one_approved_is_a_clear_refusal(
    world: World, dave: Any
) -> None:
    registry_services.update_policy(
        tool=world.tools["send_email"], changes={"approvals_required": 2}, changed_by=world.alice
    )
    world.tools["send_email"].refresh_from_db()
    call = make_call(world, "send_email", arguments=EMAIL)
    decide(
        call_id=call.pk, reviewer=dave, verdict="approve", shown_arguments_hash=call.arguments_hash
    )
    changed = decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash, edited_arguments={**EMAIL, "subject": "Changed"},
    )  # fmt: skip
    with pytest.raises(AlreadyVoted):
        decide(
            call_id=call.pk, reviewer=dave, verdict="approve",
            shown_arguments_hash=changed.call.arguments_hash, edited_arguments=EMAIL,
        )  # fmt: skip
    call.refresh_from_db()
    assert call.arguments["subject"] == "Changed" and call.status == Status.PENDING


def test_a_correction_matching_an_approving_rule_is_the_reviewers_approval(
    world: World,
) -> None:
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={"rules": [{"when": 'args.subject == "ok"', "then": "approve"}]},
        changed_by=world.alice,
    )
    call = make_call(world, "send_email", arguments=EMAIL)
    decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash, edited_arguments={**EMAIL, "subject": "ok"},
    )  # fmt: skip
    call.refresh_from_db()
    assert approved_by(call) == "reviewers"
    page = login(world.bob).get(f"/approvals/{call.pk}/").content.decode()
    assert "without a reviewer" not in page


def test_a_refused_correction_quotes_no_value_the_reviewer_saw_masked(world: World) -> None:
    """A schema error may quote the whole object, where values left masked were restored."""
    call = make_call(world, "send_email", arguments={**EMAIL, "to": "ada.lovelace@example.com"})
    tool = world.tools["send_email"]
    ToolCall.tool.field.related_model.objects.filter(pk=tool.pk).update(
        input_schema={**tool.input_schema, "maxProperties": 3}
    )  # an imported tool's schema may have root keywords that quote the instance
    shown = display.arguments(call)
    response = login(world.bob).post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "edited_arguments": json.dumps({**shown, "cc": "x"}),
        },
    )
    page = response.content.decode()
    assert "do not fit the tool" in page
    assert "ada.lovelace" not in page


def test_a_refused_correction_tells_no_guess_of_a_masked_value_from_another(
    world: World,
) -> None:
    """A reviewer who may not reveal a secret field must not be able to test guesses of it
    against refused corrections (refused, they leave no trace in the trail): a guess typed
    into another field and quoted by a schema error reads the same whether it is right or
    not, and carries no keyed fingerprint to compare with the field's marker on the page."""
    tool = world.tools["send_email"]
    tool.secret_fields = ["subject"]
    tool.save()
    call = make_call(world, "send_email", arguments={**EMAIL, "subject": "PIN 4711"})
    client = login(world.bob)
    page = client.get(f"/approvals/{call.pk}/").content.decode()
    assert "PIN 4711" not in page
    shown = display.arguments(call)
    refusals = []
    for guess in ("PIN 4711", "PIN 4712"):
        response = client.post(
            f"/approvals/{call.pk}/decide/",
            {
                "verdict": "approve",
                "arguments_hash": call.arguments_hash,
                "edited_arguments": json.dumps({**shown, "body": [guess]}),
            },
        )
        assert response.status_code == 409
        (refusal,) = re.findall(r"do not fit the tool: ([^<]*)", response.content.decode())
        refusals.append(refusal.replace(guess, "GUESS"))
    assert refusals[0] == refusals[1], refusals
    assert "[masked:" not in refusals[0]
