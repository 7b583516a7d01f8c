"""The re-send sweep and a slow queue, against the real broker (Redis).

The sweep cannot tell an approved call's lost task from one still queued behind others (a
burst of approvals, workers down for a while). Sent again every
``EXECUTOR_RESEND_AFTER_SECONDS``, a queued call had one more copy per interval, each of
which a worker must receive, claim-check and drop, in a queue already too slow. Each copy
now expires unrun when the sweep may send the next, which waits as long again as the call
had waited: one copy can run, and a copy that expires unrun loses nothing."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from approvals import sweeps
from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall
from tests.conftest import World, sandbox_effects
from tests.support import workers
from tests.support.calls import approved_call
from tests.support.workers import purge_queue, running_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def queued_copies(call_id: Any) -> list[datetime | None]:
    return workers.queued_copies(execute_call.name, call_id)


def sweep_for(seconds: float) -> None:
    """Beat's re-send sweep, every 0.2 s instead of every few seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sweeps.resend_stalled_approved()
        time.sleep(0.2)


def test_a_call_whose_task_waits_in_a_slow_queue_has_one_copy_that_can_run(
    live_world: World, settings: Any
) -> None:
    """No worker runs: the call's task waits in the queue. Each pass of the sweep that
    found it unstarted after the interval sent one more copy (six in six seconds, all to be
    run); now the copies are sent at 0, 1, 2 and 4 s (the next at 8), and all but the last
    have expired."""
    settings.EXECUTOR_RESEND_AFTER_SECONDS = 1
    purge_queue()
    call = approved_call(live_world)
    assert len(queued_copies(call.pk)) == 1, "sent once the approval committed"

    sweep_for(6)

    copies = queued_copies(call.pk)
    now = timezone.now()
    can_run = [when for when in copies if when is None or when > now]
    assert len(can_run) == 1, f"{len(can_run)} of the {len(copies)} copies can still run"
    assert len(copies) <= 4, f"{len(copies)} copies in the queue"
    # The one that can run lives until the sweep may send the next.
    assert can_run[0] is not None and can_run[0] > now + timedelta(seconds=2)
    assert ToolCall.objects.get(pk=call.pk).status == Status.APPROVED
    purge_queue()


@pytest.mark.worker
def test_a_call_whose_copies_expired_unrun_is_sent_again_and_runs_once(
    live_world: World, settings: Any, tmp_path: Path
) -> None:
    """The workers come back after the call's copies expired: they drop them unrun, and
    the sweep's next copy runs the call, once."""
    settings.EXECUTOR_RESEND_AFTER_SECONDS = 1
    purge_queue()
    call = approved_call(live_world)
    sweep_for(3)  # copies sent at 0, 1 and 2 s; the first two have expired
    with running_worker(tmp_path=tmp_path) as worker:
        wait_for(lambda: "Discarding revoked task" in worker.log, message="an expired copy")
        deadline = time.monotonic() + 30
        while ToolCall.objects.get(pk=call.pk).status != Status.SUCCEEDED:
            assert time.monotonic() < deadline, "the call never ran"
            sweeps.resend_stalled_approved()
            time.sleep(0.2)
        wait_for(lambda: not queued_copies(call.pk), message="the queue to drain")
        time.sleep(1.0)  # a copy taken from the queue reaches its claim

    effects = sandbox_effects()
    assert [e["deliveries"] for e in effects] == [1], "the handler ran once"
    assert ToolCall.objects.get(pk=call.pk).attempts == 1


def test_the_gap_between_copies_grows_to_sixteen_intervals_at_most(
    live_world: World, settings: Any
) -> None:
    """A call approved long ago whose copy Redis lost (a restart without persistence) is
    sent again within 16 intervals, not after as long again as it had waited; its copy
    lives as long."""
    settings.EXECUTOR_RESEND_AFTER_SECONDS = 1
    purge_queue()
    call = approved_call(live_world)
    approved = timezone.now() - timedelta(seconds=100)
    ToolCall.objects.filter(pk=call.pk).update(
        approved_at=approved, enqueued_at=approved + timedelta(seconds=50)
    )
    purge_queue()  # the queue lost: the copy of 50 s ago is gone
    # 15 s after the last copy: not yet (the gap is 16 intervals).
    assert sweeps.resend_stalled_approved(now=approved + timedelta(seconds=65)) == 0
    assert sweeps.resend_stalled_approved(now=approved + timedelta(seconds=67)) == 1
    (expires,) = queued_copies(call.pk)
    assert expires is not None
    assert timedelta(seconds=14) < expires - timezone.now() <= timedelta(seconds=16)
    purge_queue()
