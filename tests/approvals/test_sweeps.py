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

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals import sweeps
from approvals.execution import send
from approvals.execution.claim import claim_call, lease_until
from approvals.models import Status, ToolCall
from sandbox import effects
from tests.conftest import World
from tests.support.calls import (
    age_lease,
    approved_call,
    claimed_call,
    pending_call,
    received_read,
    unknown_call,
)
from tests.support.workers import worker_database_url
from tools_registry.models import Agent
from tools_registry.services import stop_agent
from tools_registry.sql import RUN_LOCK_CLASS, run_lock_key

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
    monkeypatch.setattr(send, "send_execution", lambda call_id, **_: sent.append(call_id))
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


@contextmanager
def a_stop_queued_behind_a_paused_claim_of(agent: Agent) -> Iterator[None]:
    """A worker paused inside a claim of one of the agent's calls holds the agent's run lock
    (shared), and a person's stop of the agent waits for it (exclusive) until the block
    ends; the stop then commits."""

    def stop() -> None:
        try:
            stop_agent(agent=Agent.objects.get(pk=agent.pk), reason="It misbehaved.")
        finally:
            connection.close()

    with psycopg.connect(worker_database_url()) as holder:
        holder.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, %s)", [RUN_LOCK_CLASS, run_lock_key(agent.pk)]
        )
        stopping = threading.Thread(target=stop)
        stopping.start()
        with psycopg.connect(worker_database_url(), autocommit=True) as watcher:
            for _ in range(200):
                queued = watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND classid::bigint = %s AND objid::bigint = %s",
                    [RUN_LOCK_CLASS, run_lock_key(agent.pk)],
                ).fetchone()
                if queued and queued[0]:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the stop never queued for the agent's run lock")
        try:
            yield
        finally:
            holder.rollback()
            stopping.join(timeout=30)


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
    call = received_read(world)
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


def test_reconciliation_reaches_a_call_behind_more_held_ones_than_a_pass_takes(
    live_world: World,
) -> None:
    """A pass takes the oldest candidates (100); one it cannot settle (held by a paused
    process, or its check raising on every pass) was left where it was, so as many of
    them as a pass takes hid every newer unknown call, pass after pass. Each pass now goes
    on from where the last stopped. Here a pass takes one call, and one is held."""
    held = unknown_call(live_world)
    waiting = unknown_call(live_world)
    with paused_in_a_transaction_on(held):
        passes = [sweeps.reconcile_unknown(limit=1) for _ in range(2)]
        waiting.refresh_from_db()
        assert waiting.status != Status.UNKNOWN, passes
    assert sum(passes, Counter()) == {"skipped": 1, "rerun": 1}


def test_a_stop_queued_behind_a_paused_claim_holds_up_no_lease_expiry(live_world: World) -> None:
    """The lease sweep takes a call's agent's run lock before the call (as a stop under way
    leaves the agent): a stop that waits for a paused worker's claim must not hold the sweep
    up, nor through it every other agent's calls behind it."""
    stopping = overdue(claimed_call(live_world)[0])
    other = Agent.objects.create(name="billing-bot", owner=live_world.alice)
    other.allowed_tools.add(*live_world.tools.values())
    elsewhere = claimed_call(replace(live_world, agent=other))[0]
    age_lease(elsewhere, seconds=60)  # due after the stopping agent's call

    with a_stop_queued_behind_a_paused_claim_of(live_world.agent):
        assert sweeps.expire_leases() == 1  # the other agent's call, at once

        assert ToolCall.objects.get(pk=stopping.pk).status == Status.EXECUTING
        assert ToolCall.objects.get(pk=elsewhere.pk).status == Status.UNKNOWN

    # The paused worker is back and the stop committed: the next pass takes the call, and
    # leaves it to a person, its agent being stopped.
    assert sweeps.expire_leases() == 1
    stopping.refresh_from_db()
    assert (stopping.status, stopping.left_to_person) == (Status.UNKNOWN, True)


def test_a_claim_that_waited_for_the_row_gets_its_whole_lease(live_world: World) -> None:
    """The claim reads the database's clock with its row lock. Read in the statement's
    select list, it was read before the wait for a row another transaction held without
    changing it (a paused process): the lease was stamped short by the wait, and the sweep
    took the call away from its worker while it still had its budget to run."""
    call = approved_call(live_world)
    waited = 1.5
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '10s'")  # the claim waits, as a worker would
    with psycopg.connect(worker_database_url()) as holder:
        holder.execute(
            f"SELECT id FROM {ToolCall._meta.db_table} WHERE id = %s FOR UPDATE",  # noqa: S608
            [call.pk],
        )
        release = threading.Timer(waited, holder.rollback)
        release.start()
        try:
            assert claim_call(call_id=call.pk) is not None
        finally:
            release.join()
    call.refresh_from_db()
    assert call.started_at is not None and call.lease_until is not None
    # Stamped when the claim had the row, as its start was: not ``waited`` seconds earlier.
    full = lease_until(call.tool, call.started_at)
    assert call.lease_until >= full - timedelta(seconds=waited / 3), (full, call.lease_until)


def test_a_step_of_the_sweep_task_that_fails_leaves_the_later_steps_to_run(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beat's ``approvals.sweep`` ran its steps one after the other, and the first to raise
    ended the pass: while the re-send failed on every pass (here a statement PostgreSQL
    refuses), no lease expired and no overdue call expired. Each step now runs on its own;
    the task still fails, so the failure is seen."""
    from approvals import tasks

    leased = overdue(claimed_call(live_world)[0])
    waiting = past_ttl(pending_call(live_world))

    def refused(**kwargs: object) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
        return 0

    monkeypatch.setattr(sweeps, "resend_stalled_approved", refused)
    with pytest.raises(sweeps.SweepFailed, match="resent"):
        tasks.sweep()
    assert ToolCall.objects.get(pk=leased.pk).status != Status.EXECUTING
    assert ToolCall.objects.get(pk=waiting.pk).status == Status.EXPIRED


def test_the_expiry_sweep_reads_the_overdue_calls_not_the_whole_queue(live_world: World) -> None:
    """Taken in the calls' default order (newest first), the overdue calls were found by
    walking the queue's index from its newest call: with statistics from a time many calls
    were overdue (sweeps held up by an outage), every pass read every waiting call (0.56 s
    at 200,000). Soonest expiry first, the pass reads the overdue calls alone. (Committed:
    the table is emptied after the test, not left with the updates' dead rows, on which
    other tests' plans would be made.)"""
    import json

    from tests.approvals.conftest import make_call

    world = live_world
    overdue = make_call(world, "delete_customer")
    past = timezone.now() - timedelta(minutes=5)
    ToolCall.objects.filter(pk=overdue.pk).update(expires_at=past)
    overdue.refresh_from_db()
    fields = {f.attname: getattr(overdue, f.attname) for f in ToolCall._meta.concrete_fields}
    ToolCall.objects.bulk_create(
        ToolCall(**{**fields, "id": uuid.uuid4(), "request_key": uuid.uuid4().hex})
        for _ in range(3000)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {ToolCall._meta.db_table}")  # as autovacuum did then
    later = timezone.now() + timedelta(hours=1)
    ToolCall.objects.exclude(pk=overdue.pk).update(expires_at=later)

    with CaptureQueriesContext(connection) as ran:
        assert sweeps.expire_overdue_pending() == 1

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + ran.captured_queries[0]["sql"])
        (plan,) = cursor.fetchone()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    nodes, read = [plan[0]["Plan"]], 0
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") == ToolCall._meta.db_table:
            read += node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
    assert read < 100, json.dumps(plan)
    overdue.refresh_from_db()
    assert overdue.status == Status.EXPIRED


def test_reconciliation_reads_its_candidates_not_every_escalated_call(live_world: World) -> None:
    """Escalated unknown calls wait for a person, any number of them, and are checked again
    only every ``EXECUTOR_RECHECK_ESCALATED_SECONDS``. Asked for as one query (not escalated,
    or due for a check), the plan read every one of them each pass, to pass over those
    checked lately (27 ms for 27,000 of 31,000 unknown calls, at 200,000 calls): most calls
    were last changed long ago, so the statistics took most unknown calls for due. Each of
    the two is a query of its own now. (Committed, as the expiry sweep's test.)"""
    import json

    waiting = unknown_call(live_world)
    fields = {f.attname: getattr(waiting, f.attname) for f in ToolCall._meta.concrete_fields}
    escalated = {**fields, "needs_attention": True, "attention_reason": "Outcome unknown."}
    ToolCall.objects.bulk_create(
        ToolCall(**{**escalated, "id": uuid.uuid4(), "request_key": uuid.uuid4().hex})
        for _ in range(1000)
    )
    # Most calls ended long ago.
    done = ToolCall.objects.bulk_create(
        ToolCall(**{**fields, "status": Status.SUCCEEDED, "id": uuid.uuid4(), "request_key": k})
        for k in (uuid.uuid4().hex for _ in range(10000))
    )
    ToolCall.objects.filter(pk__in=[c.pk for c in done]).update(
        updated_at=timezone.now() - timedelta(days=1)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {ToolCall._meta.db_table}")  # as autovacuum does

    with CaptureQueriesContext(connection) as ran:
        assert sum(sweeps.reconcile_unknown().values()) == 1  # the one not escalated

    (candidates,) = [q["sql"] for q in ran.captured_queries if "ORDER BY" in q["sql"]][:1]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + candidates)
        (plan,) = cursor.fetchone()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    nodes, read = [plan[0]["Plan"]], 0
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") == ToolCall._meta.db_table:
            read += node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
    assert read < 100, json.dumps(plan)
