"""The retention sweeps of the edge's own rows (``gateway.retention``, ``idempotency.sweep``)
against what they must never break: a session's round counter while it is used, the key of
a request still running, and a webhook delivery that has not ended."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from approvals.models import ToolCall
from core import db
from gateway import idempotency, retention, sql, webhooks
from gateway.models import AgentSession, IdempotencyRecord, WebhookAttempt, WebhookDelivery
from tests.conftest import World
from tests.gateway.conftest import SEND_EMAIL
from tests.support.probe import install_probe_tool, stock_call


def _long_ago() -> datetime:
    return timezone.now() - timedelta(seconds=settings.AGENT_SESSION_RETENTION_SECONDS + 3600)


def _swept_while_held(change: Callable[[], None]) -> int:
    """``retention.sweep()`` run in another thread while this one's open transaction has
    made ``change`` to a row the sweep picked: it waits for that row, then checks its
    condition again on the row as the change left it. Returns how many rows it deleted."""
    swept: list[int] = []

    def sweep() -> None:
        try:
            swept.append(retention.sweep())
        finally:
            connections.close_all()

    sweeper = threading.Thread(target=sweep)
    with transaction.atomic():
        change()
        sweeper.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiting_on_a_lock(), "the sweep waits for the changed row"
    sweeper.join(timeout=10)
    (deleted,) = swept
    return deleted


def _waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        # Inside a transaction the statistics views answer from a snapshot: read afresh.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_round_counted_while_the_sweep_deletes_its_session_is_kept(live_world: World) -> None:
    """The sweep picked an idle session; before its DELETE, a new call counts a round in it
    (uncommitted, holding the row). The DELETE waits, checks its condition again on the
    row as the call left it, and keeps the session with its rounds."""
    agent = live_world.agent
    assert live_world.api().submit(SEND_EMAIL).status_code == 202
    AgentSession.objects.update(last_call_at=_long_ago())

    def count_a_round() -> None:
        assert db.one(
            sql.count_round_statement(
                agent_id=agent.pk, session_id="run-1", limit=10, now=timezone.now()
            )
        )

    assert _swept_while_held(count_a_round) == 0
    (session,) = AgentSession.objects.all()
    assert session.rounds == 2


def test_a_session_refused_for_its_rounds_is_kept_while_its_agent_keeps_calling(
    world: World,
) -> None:
    """A run that used its rounds long ago and is still calling (each call refused) is not
    idle: the sweep must not give it its rounds back."""
    world.agent.max_rounds_per_session = 1
    world.agent.save()
    assert world.api().submit(SEND_EMAIL).status_code == 202
    AgentSession.objects.update(last_call_at=_long_ago())
    refused = world.api().submit(SEND_EMAIL)
    assert refused.json()["error"]["code"] == "max_rounds_exceeded"
    retention.sweep()
    again = world.api().submit(SEND_EMAIL)
    assert again.status_code == 429, again.content
    assert again.json()["error"]["code"] == "max_rounds_exceeded"
    assert ToolCall.objects.count() == 1
    # Once the agent stops calling, the session is swept as before.
    AgentSession.objects.update(last_call_at=_long_ago())
    assert retention.sweep() == 1


@pytest.mark.django_db(transaction=True)
def test_the_key_sweep_keeps_the_key_of_a_request_still_running(
    live_world: World, probe_tool_cleanup: None, settings: object
) -> None:
    """However short IDEMPOTENCY_KEY_TTL is, a read still running holds its key: a
    duplicate meanwhile is 409 (not 422 idempotency_key_expired), and its answer is stored
    for the replays once it ends."""
    settings.IDEMPOTENCY_KEY_TTL = 0  # type: ignore[attr-defined]
    probe = install_probe_tool(live_world)
    probe.hold = threading.Event()
    key = f"running-{uuid.uuid4()}"
    answers: list[tuple[int, dict]] = []

    def first() -> None:
        try:
            response = live_world.api().submit(stock_call(), key=key)
            answers.append((response.status_code, response.json()))
        finally:
            connections.close_all()

    runner = threading.Thread(target=first)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while probe.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert probe.calls == 1, "the read runs"
        time.sleep(0.01)  # past the record's created_at, for a TTL of 0
        idempotency.sweep()
        duplicate = live_world.api().submit(stock_call(), key=key)
        assert duplicate.status_code == 409, duplicate.content
        assert duplicate.json()["error"]["code"] == "idempotency_key_in_use"
    finally:
        probe.hold.set()
        runner.join(timeout=20)
    assert answers and answers[0][0] == 200
    replay = live_world.api().submit(stock_call(), key=key)
    assert replay.status_code == 200, replay.content
    assert replay.json()["id"] == answers[0][1]["id"]
    assert probe.calls == 1
    # Once complete, it is swept like any other record.
    assert idempotency.sweep() == 1
    assert not IdempotencyRecord.objects.filter(key=key).exists()


@pytest.mark.django_db
def test_batches_walk_on_from_the_last_and_delete_only_what_is_due(world: World) -> None:
    """Deleted a few at a time, interleaved with rows still in use: every due row goes, in
    as many batches as it takes, and none in use does."""
    agent = world.agent
    long_ago, recent = _long_ago(), timezone.now()
    for n in range(7):
        AgentSession.objects.create(
            agent=agent, session_id=f"s{n}", last_call_at=long_ago if n % 2 == 0 else recent
        )
    due = AgentSession.objects.filter(last_call_at__lt=recent - timedelta(seconds=1))

    assert retention.delete_in_batches(due, batch=2) == 4
    assert sorted(AgentSession.objects.values_list("session_id", flat=True)) == ["s1", "s3", "s5"]


def _webhooks_long_ago() -> datetime:
    return timezone.now() - timedelta(seconds=settings.WEBHOOK_RETENTION_SECONDS + 3600)


def _delivery(world: World, **fields: object) -> WebhookDelivery:
    """A webhook delivery of a new call, written as a status change writes it, then set."""
    call = ToolCall.objects.get(pk=world.api().submit(SEND_EMAIL).json()["id"])
    delivery_id = webhooks.schedule(call, "call.pending")
    WebhookDelivery.objects.filter(pk=delivery_id).update(**fields)
    return WebhookDelivery.objects.get(pk=delivery_id)


def _attempt(delivery: WebhookDelivery, number: int = 1) -> None:
    WebhookAttempt.objects.create(
        delivery=delivery, number=number, started_at=delivery.next_attempt_at, status_code=200
    )


def test_ended_deliveries_go_with_their_attempts_and_pending_ones_stay_however_old(
    world: World,
) -> None:
    """Delivered or given up longer ago than WEBHOOK_RETENTION_SECONDS: deleted with their
    attempts (their bodies hold the calls' results). Pending, leased to an attempt in
    flight or waiting for the next, however old: kept; ended recently: kept."""
    old, now = _webhooks_long_ago(), timezone.now()
    State = WebhookDelivery.State
    pending = {"state": State.PENDING, "created_at": old, "next_attempt_at": old}
    gone = {
        "delivered": _delivery(world, state=State.DELIVERED, delivered_at=old, ended_at=old),
        "failed": _delivery(world, state=State.FAILED, ended_at=old, next_attempt_at=old),
        # Ended before ended_at was added: dated by its last attempt's due time.
        "legacy": _delivery(world, state=State.FAILED, next_attempt_at=old),
    }
    kept = {
        "waiting": _delivery(world, **pending, attempts=3),
        "in flight": _delivery(world, **pending, lease_until=now + timedelta(seconds=40)),
        "recent": _delivery(world, state=State.DELIVERED, created_at=old, ended_at=now),
        "legacy recent": _delivery(world, state=State.FAILED, created_at=old, next_attempt_at=now),
    }
    for delivery in [*gone.values(), *kept.values()]:
        _attempt(delivery)
    _attempt(gone["failed"], number=2)

    assert retention.sweep() == len(gone)
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {
        d.pk for d in kept.values()
    }
    assert set(WebhookAttempt.objects.values_list("delivery_id", flat=True)) == {
        d.pk for d in kept.values()
    }
    # The calls stay, and read as before.
    for delivery in gone.values():
        assert world.api().get(f"/api/v1/tool-calls/{delivery.call_id}").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_delivery_picked_by_the_sweep_and_changed_before_its_delete_is_kept(
    live_world: World,
) -> None:
    """The sweep picked an old ended delivery; before its DELETE another transaction
    changes the row (uncommitted) so that it no longer matches. The sweep waits, checks its
    condition again on the row as it was left, and keeps it with its attempts (Django's
    cascade deletes the rows it collected by key alone, whatever they became)."""
    old = _webhooks_long_ago()
    delivery = _delivery(
        live_world, state=WebhookDelivery.State.DELIVERED, delivered_at=old, ended_at=old
    )
    _attempt(delivery)

    def end_it_again_now() -> None:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(ended_at=timezone.now())

    assert _swept_while_held(end_it_again_now) == 0
    assert WebhookDelivery.objects.filter(pk=delivery.pk).exists()
    assert WebhookAttempt.objects.filter(delivery_id=delivery.pk).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_delivery_in_flight_is_not_swept_and_goes_once_it_has_ended(
    live_world: World, settings: object
) -> None:
    """However old, a delivery whose attempt is in flight (the receiver has the POST and
    has not answered) is kept, even with a retention of 0; once delivered, its attempt is
    recorded and its end dated, and the next sweep deletes it."""
    settings.WEBHOOK_RETENTION_SECONDS = 0  # type: ignore[attr-defined]
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True  # type: ignore[attr-defined]
    got, answer = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            got.set()
            answer.wait(10)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    old = _webhooks_long_ago() - timedelta(days=365)
    delivery = _delivery(
        live_world,
        url=f"http://127.0.0.1:{server.server_address[1]}/hook",
        created_at=old,
        next_attempt_at=old,
        dispatched_at=old,
    )
    results: list[str] = []

    def deliver() -> None:
        try:
            results.append(webhooks.deliver(delivery.pk))
        finally:
            connections.close_all()

    worker = threading.Thread(target=deliver)
    worker.start()
    try:
        assert got.wait(10), "the attempt reaches the receiver"
        assert retention.sweep() == 0
        assert WebhookDelivery.objects.filter(pk=delivery.pk).exists()
    finally:
        answer.set()
        worker.join(timeout=20)
        server.shutdown()
        server.server_close()
    assert results == ["delivered"]
    delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.DELIVERED
    assert delivery.ended_at is not None and delivery.ended_at > old
    assert [a.status_code for a in delivery.attempt_log.all()] == [204]
    time.sleep(0.01)  # past its end, for a retention of 0
    assert retention.sweep() == 1
    assert not WebhookDelivery.objects.filter(pk=delivery.pk).exists()
    assert not WebhookAttempt.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_attempt_taken_over_and_ended_then_swept_leaves_its_stalled_worker_nothing_to_break(
    live_world: World, settings: object
) -> None:
    """A worker stalls in its POST past its lease; another takes the delivery over and it
    is delivered; with a retention of 0 the sweep deletes it with its attempts. The stalled
    worker, its answer come at last, recorded its attempt against the deleted delivery:
    IntegrityError, again when recorded bare, and its task raised. It now finds the delivery
    gone and records nothing: no row of a delivery the sweep deleted comes back."""
    settings.WEBHOOK_RETENTION_SECONDS = 0  # type: ignore[attr-defined]
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True  # type: ignore[attr-defined]
    first, answer = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            if not first.is_set():  # the stalled worker's POST, answered late
                first.set()
                answer.wait(10)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    delivery = _delivery(live_world, url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    results: list[str] = []

    def stalled() -> None:
        try:
            results.append(webhooks.deliver(delivery.pk))
        except Exception as exc:
            results.append(repr(exc))
        finally:
            connections.close_all()

    worker = threading.Thread(target=stalled)
    worker.start()
    try:
        assert first.wait(10), "the stalled attempt reaches the receiver"
        rows = WebhookDelivery.objects.filter(pk=delivery.pk)
        rows.update(lease_until=timezone.now() - timedelta(seconds=1))  # its lease lapsed
        assert webhooks.deliver(delivery.pk) == "delivered"  # taken over
        time.sleep(0.01)  # past its end, for a retention of 0
        assert retention.sweep() == 1
    finally:
        answer.set()
        worker.join(timeout=20)
        server.shutdown()
        server.server_close()
    assert results == ["delivered"]
    assert not WebhookDelivery.objects.exists()
    assert not WebhookAttempt.objects.exists()
