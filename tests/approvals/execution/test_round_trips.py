"""An executed call's claim and finish wait on the database as few times as their guarantees
allow: the claim twice (the row lock, read before anything is decided; then the move, the
intent event and COMMIT together), the finish once (the fenced move, the result event and
COMMIT together). Counted in libpq's own trace; what each committed is read back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.execution.claim import claim_call
from approvals.execution.finish import Outcome, expire_lease, finish_call
from approvals.models import Status, ToolCall
from approvals.services.attention import resolve_call
from audit.models import AuditEvent
from tests.conftest import World
from tests.support.calls import approved_call, claimed_call
from tests.support.pgtrace import traced

pytestmark = pytest.mark.django_db(transaction=True)


def actions(call_id: object) -> list[str]:
    return list(
        AuditEvent.objects.filter(call_id=call_id).order_by("id").values_list("action", flat=True)
    )


def test_a_claim_waits_twice_and_a_finish_once(live_world: World) -> None:
    call = approved_call(live_world)
    with traced() as trace:
        claim = claim_call(call_id=call.pk)
    assert claim is not None
    (claimed,) = trace
    assert claimed.round_trips == 2, "BEGIN + run lock + row lock; move + event + COMMIT"
    assert (claimed.sent("BEGIN"), claimed.sent("COMMIT")) == (1, 1)
    stored = ToolCall.objects.get(pk=call.pk)
    assert (stored.status, stored.fence) == (Status.EXECUTING, claim.fence)

    with traced() as trace:
        done = finish_call(claim=claim, outcome=Outcome(status=Status.SUCCEEDED, result={"ok": 1}))
    assert done is True
    (finished,) = trace
    assert finished.round_trips == 1, "BEGIN, move, counterparties, event and COMMIT together"
    stored.refresh_from_db()
    assert (stored.status, stored.result, stored.fence) == (
        Status.SUCCEEDED,
        {"ok": 1},
        claim.fence,
    )
    assert actions(call.pk)[-2:] == ["call.execution_started", "call.execution_finished"]


def test_a_stale_finish_writes_nothing_of_its_result_and_says_it_was_discarded(
    live_world: World,
) -> None:
    """Its lease taken, and the call's outcome then marked by a person: the late result
    has no say (test_late_results.py: one nothing acted on is settled by it)."""
    call, stale = claimed_call(live_world)
    assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))
    resolve_call(call_id=call.pk, person=live_world.bob, outcome=Status.FAILED, note="checked")
    before = ToolCall.objects.values().get(pk=call.pk)
    seen = actions(call.pk)

    late = Outcome(status=Status.SUCCEEDED, result={"late": True})
    assert finish_call(claim=stale, outcome=late) is False

    assert ToolCall.objects.values().get(pk=call.pk) == before, "not a column changed"
    assert before["status"] == Status.FAILED
    assert actions(call.pk) == [*seen, "call.stale_result_discarded"]
    discarded = AuditEvent.objects.get(call_id=call.pk, action="call.stale_result_discarded")
    assert discarded.data["claim_fence"] == stale.fence
