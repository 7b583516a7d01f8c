"""The sweeps never wait on a call another transaction holds.

A worker paused inside a transaction on a call (SIGSTOP, a frozen VM, a partition from
PostgreSQL: its claim locked the row, then the process stopped) keeps the row locked for as
long as it stays paused. A sweep that waited for that row would wait just as long, and so
would every later sweep queued behind it, each holding a worker: no lease would expire, no
lost message would be sent again, no unknown outcome reconciled, until the paused process
came back. The soak (``bench/soak.py``) found it so: one victim paused in its claim held up
every sweep for a minute. Each sweep skips a locked call and comes back to it next pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from approvals import sweeps
from approvals.execution import send
from approvals.models import Status, ToolCall
from approvals.services.calls import create_call
from sandbox import effects
from tests.conftest import World
from tests.support.calls import age_lease, approved_call, claimed_call, pending_call, unknown_call
from tests.support.workers import worker_database_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def nothing_waits_long(transactional_db: None) -> Iterator[None]:
    """A sweep that waits on the locked row fails after 2 s here instead of hanging."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '2s'")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")


@pytest.fixture(autouse=True)
def sends_held_back(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    sent: list[uuid.UUID] = []
    monkeypatch.setattr(send, "send_execution", sent.append)
    return sent


@contextmanager
def paused_in_a_transaction_on(call: ToolCall) -> Iterator[None]:
    """Another connection locks the call's row, as a worker paused inside its claim does,
    and holds it until the block ends."""
    with psycopg.connect(worker_database_url()) as holder:
        holder.execute(
            f"SELECT id FROM {ToolCall._meta.db_table} WHERE id = %s FOR UPDATE",  # noqa: S608
            [call.pk],
        )
        yield
        holder.rollback()


def stalled(call: ToolCall) -> ToolCall:
    ToolCall.objects.filter(pk=call.pk).update(enqueued_at=timezone.now() - timedelta(hours=1))
    return call


def overdue(call: ToolCall) -> ToolCall:
    age_lease(call)
    return call


def with_effect(call: ToolCall) -> ToolCall:
    effects.apply_once(tool=call.tool.name, key=call.execution_key, effect=lambda: {"sent": 1})
    return call


def past_ttl(call: ToolCall) -> ToolCall:
    ToolCall.objects.filter(pk=call.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    return call


def abandoned_read(world: World) -> ToolCall:
    call = create_call(
        agent=world.agent,
        tool=world.tools["get_customer"],
        arguments={"customer_id": "cus_0001"},
        session_id="s",
        request_key=uuid.uuid4().hex,
    )
    ToolCall.objects.filter(pk=call.pk).update(created_at=timezone.now() - timedelta(hours=1))
    return call


# (how to make a call the sweep is due to move, the sweep, what it reports for one call)
SWEEPS: dict[str, tuple[Callable[[World], ToolCall], Callable[[], object], object]] = {
    "re-send": (lambda w: stalled(approved_call(w)), sweeps.resend_stalled_approved, 1),
    "lease expiry": (lambda w: overdue(claimed_call(w)[0]), sweeps.expire_leases, 1),
    "reconciliation": (
        lambda w: with_effect(unknown_call(w)),
        lambda: sweeps.reconcile_unknown()["succeeded"],
        1,
    ),
    "expiry of pending calls": (
        lambda w: past_ttl(pending_call(w)),
        sweeps.expire_overdue_pending,
        1,
    ),
    "abandoned reads": (abandoned_read, sweeps.fail_abandoned_reads, 1),
}


@pytest.mark.parametrize("sweep", list(SWEEPS))
def test_a_sweep_skips_a_call_a_paused_process_holds_and_moves_the_others(
    live_world: World, sweep: str
) -> None:
    make, run, one = SWEEPS[sweep]
    held, free = make(live_world), make(live_world)
    before = ToolCall.objects.get(pk=held.pk)

    with paused_in_a_transaction_on(held):
        assert run() == one  # the free call, at once: no wait on the held one

        after = ToolCall.objects.get(pk=held.pk)
        assert (after.status, after.fence, after.enqueued_at) == (
            before.status,
            before.fence,
            before.enqueued_at,
        )
        assert ToolCall.objects.get(pk=free.pk).status != before.status or sweep == "re-send"

    assert run() == one  # the process is back: the next pass moves the held call


def test_every_sweep_runs_through_while_paused_processes_hold_a_call_of_each_kind(
    live_world: World,
) -> None:
    held = [make(live_world) for make, _, _ in SWEEPS.values()]

    def moved(report: sweeps.SweepReport) -> tuple[int, ...]:
        return (
            report.resent,
            report.leases_expired,
            report.reconciled,
            report.expired,
            report.reads_abandoned,
        )

    with ExitStack() as paused:
        for call in held:
            paused.enter_context(paused_in_a_transaction_on(call))
        assert moved(sweeps.run_all()) == (0, 0, 0, 0, 0)

    assert moved(sweeps.run_all()) == (1, 1, 1, 1, 1)
    assert ToolCall.objects.get(pk=held[2].pk).status == Status.SUCCEEDED
