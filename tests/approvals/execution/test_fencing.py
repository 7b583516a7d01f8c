"""The claim admits one worker, and the finish only the worker still holding the fence:
threads racing on one call against PostgreSQL, as duplicate deliveries and a worker that
woke up after its lease was taken over would."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from approvals.execution.claim import claim_call
from approvals.execution.finish import Outcome, expire_lease, finish_call
from approvals.models import Status, ToolCall
from audit.models import AuditEvent
from tests.conftest import World
from tests.support.calls import approved_call, claimed_call

ROUNDS = 5
RACERS = 8


def race(action: Callable[[int], Any], racers: int = RACERS) -> list[Any]:
    """Run ``action(i)`` in ``racers`` threads released at once; what each one got."""
    barrier = threading.Barrier(racers)
    results: list[Any] = [None] * racers

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = action(index)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_of_racing_deliveries_exactly_one_claims_the_call(live_world: World, round_: int) -> None:
    call = approved_call(live_world)
    claims = [c for c in race(lambda _: claim_call(call_id=call.pk)) if c is not None]
    assert len(claims) == 1
    call.refresh_from_db()
    assert (call.status, call.fence, call.attempts) == (Status.EXECUTING, 1, 1)
    assert claims[0].fence == call.fence
    started = AuditEvent.objects.filter(call_id=call.pk, action="call.execution_started")
    assert started.count() == 1


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_worker_that_lost_its_lease_stores_nothing_while_the_new_holder_does(
    live_world: World, round_: int
) -> None:
    call, stale = claimed_call(live_world)
    assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))
    # The outcome is unknown; reconciliation would run it again under a new claim.
    ToolCall.objects.filter(pk=call.pk).update(status=Status.APPROVED)  # set-up: its re-run
    fresh = claim_call(call_id=call.pk)
    assert fresh is not None and fresh.fence == stale.fence + 2

    def finish(index: int) -> bool:
        # Racer 0 holds the current claim; every other one is the worker that woke up late.
        claim, by = (fresh, "fresh") if index == 0 else (stale, "stale")
        return finish_call(claim=claim, outcome=Outcome(status=Status.SUCCEEDED, result={"by": by}))

    stored = race(finish)
    assert stored == [True] + [False] * (RACERS - 1)
    call.refresh_from_db()
    assert (call.status, call.result, call.fence) == (
        Status.SUCCEEDED,
        {"by": "fresh"},
        fresh.fence,
    )
    discarded = AuditEvent.objects.filter(call_id=call.pk, action="call.stale_result_discarded")
    assert discarded.count() == RACERS - 1
