"""A worker paused past its lease comes back: its handler's verdict is the one first-hand
account of what happened. It settles the call (``call.late_result_accepted``) while nothing
else has acted on it since the lease sweep; once anything has (a re-run, a claim, a
person), it is only recorded as discarded. The pause is the test's: the lease sweep runs
between the claim and the finish, in-process."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from approvals import sweeps
from approvals.execution import runner
from approvals.execution.claim import Claim, claim_call
from approvals.execution.finish import DESTRUCTIVE_FAILED, Outcome, expire_lease, finish_call
from approvals.models import Status, ToolCall
from approvals.services.attention import resolve_call
from approvals.services.recovery import reconcile_call
from audit.models import AuditEvent
from gateway import notify
from gateway.models import WebhookDelivery
from sandbox.models import Effect
from tests.conftest import World
from tests.support.calls import approved_call, claimed_call, received_read
from tools_registry import registry
from tools_registry import services as registry_services
from tools_registry.models import Tool

LATER = timedelta(hours=1)
NAME = "Zebulon Late-Canary"


def actions(call_id: Any) -> list[str]:
    return list(
        AuditEvent.objects.filter(call_id=call_id).order_by("id").values_list("action", flat=True)
    )


def paused_past_its_lease(world: World, tool: str = "send_email") -> tuple[ToolCall, Claim]:
    """A claimed call whose worker the lease sweep gave up on: unknown, the fence moved on."""
    call, claim = claimed_call(world, tool)
    assert expire_lease(call_id=call.pk, now=timezone.now() + LATER)
    call.refresh_from_db()
    assert (call.status, call.fence) == (Status.UNKNOWN, claim.fence + 1)
    return call, claim


def refused(code: str = "customer_not_found") -> Outcome:
    """A handler's ToolFailed: the effect surely did not happen."""
    return Outcome(
        status=Status.FAILED,
        error={"code": code, "message": "No customer cus_gone.", "retryable": False},
        latency_ms=40,
    )


class TestTheLateVerdictSettlesAnUntouchedCall:
    def test_a_late_success_settles_the_call_with_its_result(
        self, world: World, django_capture_on_commit_callbacks: Any
    ) -> None:
        call, claim = paused_past_its_lease(world)
        ToolCall.objects.filter(pk=call.pk).update(callback_url="https://agent.example/hooks")
        outcome = runner.run_handler(claim)  # the real handler: the e-mail is sent
        assert outcome.status == Status.SUCCEEDED

        with django_capture_on_commit_callbacks() as callbacks:
            assert finish_call(claim=claim, outcome=outcome) is False  # not under its claim

        call.refresh_from_db()
        assert (call.status, call.result, call.error) == (Status.SUCCEEDED, outcome.result, None)
        assert call.fence == claim.fence + 1 and call.finished_at is not None
        assert call.needs_attention is False and call.lease_until is None
        assert actions(call.pk)[-2:] == ["call.lease_expired", "call.late_result_accepted"]
        event = AuditEvent.objects.get(call_id=call.pk, action="call.late_result_accepted")
        assert event.outcome == Status.SUCCEEDED
        assert event.data["claim_fence"] == claim.fence
        assert event.data["fence"] == claim.fence + 1
        assert event.data["result"]["message_id"] == outcome.result["message_id"]
        # The agent hears of it as of any end: its webhook, and its long-polls woken.
        delivery = WebhookDelivery.objects.get(call=call)
        assert delivery.event == "call.succeeded"
        woken = [
            cb for cb in callbacks if isinstance(cb, partial) and cb.func is notify._after_commit
        ]
        assert [cb.args[:2] for cb in woken] == [(call.pk, Status.SUCCEEDED)]
        # Reconciliation then has nothing left to ask.
        assert sweeps.reconcile_unknown() == {}

    def test_a_late_result_is_masked_in_the_trail_as_a_finished_one_is(self, world: World) -> None:
        """update_customer answers with the whole record: the new name, hidden at
        changes.name, comes back at customer.name."""
        tool = world.tools["update_customer"]
        registry_services.update_policy(
            tool=tool,
            changes={"sensitive_fields": [*tool.sensitive_fields, "changes.name"]},
            changed_by=world.alice,
        )
        world.tools["update_customer"] = Tool.objects.get(pk=tool.pk)
        call = approved_call(
            world,
            "update_customer",
            arguments={"customer_id": "cus_0001", "changes": {"name": NAME}},
        )
        claim = claim_call(call_id=call.pk)
        assert claim is not None
        assert expire_lease(call_id=call.pk, now=timezone.now() + LATER)

        finish_call(claim=claim, outcome=runner.run_handler(claim))

        call.refresh_from_db()
        assert call.status == Status.SUCCEEDED and call.result["customer"]["name"] == NAME
        event = AuditEvent.objects.get(call_id=call.pk, action="call.late_result_accepted")
        assert NAME not in str(event.data)
        assert "[masked:" in str(event.data["result"]["customer"]["name"])

    def test_a_call_escalated_for_want_of_a_lookup_is_settled_without_the_person(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        call, claim = paused_past_its_lease(world)
        monkeypatch.setattr(registry.get("send_email"), "lookup_fn", None)
        assert sweeps.reconcile_unknown() == {"escalated": 1}  # a person is asked

        finish_call(claim=claim, outcome=runner.run_handler(claim))

        call.refresh_from_db()
        assert call.status == Status.SUCCEEDED
        assert (call.needs_attention, call.attention_reason) == (False, "")
        assert "call.late_result_accepted" in actions(call.pk)

    def test_a_late_refusal_fails_a_write_as_it_would_have_on_time(self, world: World) -> None:
        call, claim = paused_past_its_lease(world)

        finish_call(claim=claim, outcome=refused())

        call.refresh_from_db()
        assert (call.status, call.error["code"], call.result) == (
            Status.FAILED,
            "customer_not_found",
            None,
        )
        assert call.needs_attention is False  # the agent may retry it, with the same key
        assert actions(call.pk)[-1] == "call.late_result_accepted"

    def test_a_late_refusal_of_a_destructive_call_is_escalated_as_on_time(
        self, world: World
    ) -> None:
        call, claim = paused_past_its_lease(world, "delete_customer")

        finish_call(claim=claim, outcome=refused())

        call.refresh_from_db()
        assert call.status == Status.FAILED
        assert (call.needs_attention, call.attention_reason) == (True, DESTRUCTIVE_FAILED)
        assert actions(call.pk)[-2:] == ["call.late_result_accepted", "call.escalated"]


class TestOtherwiseItIsDiscarded:
    def test_a_late_unknown_changes_nothing(self, world: World) -> None:
        call, claim = paused_past_its_lease(world)
        before = ToolCall.objects.values().get(pk=call.pk)

        late = Outcome(status=Status.UNKNOWN, error={"code": "timeout", "message": "slow"})
        assert finish_call(claim=claim, outcome=late) is False

        assert ToolCall.objects.values().get(pk=call.pk) == before
        assert actions(call.pk)[-1] == "call.stale_result_discarded"

    def test_a_read_stays_failed_as_the_sweep_left_it(self, world: World) -> None:
        call = received_read(world)
        claim = claim_call(call_id=call.pk)
        assert claim is not None
        assert expire_lease(call_id=call.pk, now=timezone.now() + LATER)

        late = Outcome(status=Status.SUCCEEDED, result={"customer": "cus_0001"})
        assert finish_call(claim=claim, outcome=late) is False

        call.refresh_from_db()
        assert (call.status, call.error["code"], call.result) == (
            Status.FAILED,
            "lease_expired",
            None,
        )
        assert actions(call.pk)[-1] == "call.stale_result_discarded"

    def test_a_call_reconciliation_sent_to_run_again_is_left_to_its_rerun(
        self, world: World
    ) -> None:
        call, claim = paused_past_its_lease(world)
        assert sweeps.reconcile_unknown() == {"rerun": 1}  # not found yet: sent again

        finish_call(claim=claim, outcome=Outcome(status=Status.SUCCEEDED, result={"late": 1}))

        call.refresh_from_db()
        assert (call.status, call.result) == (Status.APPROVED, None)
        assert actions(call.pk)[-1] == "call.stale_result_discarded"

    def test_a_call_claimed_again_meanwhile_is_its_new_workers(self, world: World) -> None:
        call, claim = paused_past_its_lease(world)
        assert sweeps.reconcile_unknown() == {"rerun": 1}
        again = claim_call(call_id=call.pk)
        assert again is not None and again.fence == claim.fence + 2
        assert expire_lease(call_id=call.pk, now=timezone.now() + LATER)  # it went silent too

        finish_call(claim=claim, outcome=Outcome(status=Status.SUCCEEDED, result={"late": 1}))

        call.refresh_from_db()
        assert (call.status, call.fence) == (Status.UNKNOWN, claim.fence + 3)
        assert actions(call.pk)[-1] == "call.stale_result_discarded"

    @pytest.mark.parametrize("outcome", [Status.SUCCEEDED, Status.FAILED])
    def test_a_person_who_decided_meanwhile_is_not_overruled(
        self, world: World, outcome: str
    ) -> None:
        call, claim = paused_past_its_lease(world)
        resolve_call(call_id=call.pk, person=world.bob, outcome=outcome, note="checked the outbox")

        # The worker's verdict says otherwise; the person's stands.
        if outcome == Status.SUCCEEDED:
            late = refused()
        else:
            late = Outcome(status=Status.SUCCEEDED, result={"late": 1})
        finish_call(claim=claim, outcome=late)

        call.refresh_from_db()
        assert call.status == outcome
        assert actions(call.pk)[-1] == "call.stale_result_discarded"

    def test_a_rerun_refused_at_its_claim_is_left_to_the_person(self, world: World) -> None:
        """Sent to run again, then refused at its claim (its tool switched off): back to
        unknown with the sweep's fence, for a person. The call left unknown and came back;
        someone decided on it in between, so the late verdict does not settle it."""
        call, claim = paused_past_its_lease(world)
        assert sweeps.reconcile_unknown() == {"rerun": 1}
        Tool.objects.filter(pk=call.tool_id).update(enabled=False)
        assert claim_call(call_id=call.pk) is None

        call.refresh_from_db()
        assert (call.status, call.fence) == (Status.UNKNOWN, claim.fence + 1)
        finish_call(claim=claim, outcome=Outcome(status=Status.SUCCEEDED, result={"late": 1}))

        call.refresh_from_db()
        assert (call.status, call.result) == (Status.UNKNOWN, None)
        assert call.needs_attention is True
        assert actions(call.pk)[-1] == "call.stale_result_discarded"


ROUNDS = 6


@pytest.mark.parametrize("effect", ["before", "during"])
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_late_result_and_reconciliation_never_both_settle_the_call(
    live_world: World, round_: int, effect: str
) -> None:
    """The paused worker comes back while the reconciliation sweep asks the downstream, in
    two threads against PostgreSQL. Its effect happened before the sweep looked (found: both
    would settle it succeeded), or happens while it looks (found, or not found: reconciliation
    sends it to run again). Exactly one of them settles it; the effect happens once."""
    call, claim = claimed_call(live_world)
    outcome = runner.run_handler(claim) if effect == "before" else None
    assert expire_lease(call_id=call.pk, now=timezone.now() + LATER)
    barrier = threading.Barrier(2)
    got: dict[str, Any] = {}

    def late_worker() -> None:
        try:
            barrier.wait()
            done = outcome or runner.run_handler(claim)
            got["finished"] = finish_call(claim=claim, outcome=done)
        finally:
            connection.close()

    def reconciliation() -> None:
        try:
            barrier.wait()
            # Staggered from round to round: it asks before the effect, after it, before
            # the late worker's finish or after it.
            time.sleep(round_ * 0.01)
            got["reconciled"] = reconcile_call(call_id=call.pk).action
        finally:
            connection.close()

    threads = [threading.Thread(target=late_worker), threading.Thread(target=reconciliation)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert got["finished"] is False

    trail = actions(call.pk)
    accepted = trail.count("call.late_result_accepted")
    reconciled = trail.count("call.reconciled")
    assert accepted + reconciled == 1, trail
    if accepted:
        assert got["reconciled"] == "skipped"
        assert "call.stale_result_discarded" not in trail and "call.rerun" not in trail
    else:
        assert got["reconciled"] in ("succeeded", "rerun")
        assert trail.count("call.stale_result_discarded") == 1
    call.refresh_from_db()
    if call.status == Status.APPROVED:  # sent to run again: its worker, with the same key
        runner.execute(call.pk)
        call.refresh_from_db()
    assert call.status == Status.SUCCEEDED
    assert call.attempts == (1 if accepted or got["reconciled"] == "succeeded" else 2)
    applied = Effect.objects.filter(idempotency_key=call.execution_key)
    assert applied.count() == 1, "the e-mail went once"
    assert call.result["message_id"] == applied.get().summary["result"]["message_id"]
