"""Webhooks: a call's events (pending, decided, terminal) are POSTed to its callback_url in
the Standard Webhooks format, signed with the agent's secret (verified here with the
``standardwebhooks`` library), retried with backoff from the beat-driven sweep until the
receiver accepts them, and every attempt is recorded."""

from __future__ import annotations

import base64
import hmac
import itertools
import json
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import standardwebhooks
from countersign_client import verify_webhook
from django.conf import settings
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from approvals.execution.tasks import execute_call
from approvals.models import ToolCall
from approvals.services import standing
from approvals.services.calls import cancel_call
from approvals.services.decisions import decide
from audit.models import AuditEvent
from gateway import webhooks
from gateway.models import WebhookDelivery
from gateway.tasks import deliver_webhook
from tests.conftest import World
from tests.gateway.conftest import SEND_EMAIL, in_threads
from tests.support.compression import gzip_bomb
from tests.support.upstreams.raw_http import RawHttpServer, drip_headers
from tests.support.upstreams.raw_http import reply as raw_reply
from tests.support.workers import (
    purge_queue,
    queued_copies,
    running_worker,
    wait_for,
    worker_database_url,
)
from tools_registry import services as registry_services
from tools_registry.models import Agent


@dataclass
class Receiver:
    """A real HTTP server in a thread that answers with scripted status codes (to the
    events of type ``scripted``, or to all when it is empty; the others get 200)."""

    statuses: list[int]
    delay: float = 0.0
    scripted: str = ""
    # The answer's body: this many bytes, sent ``drip`` seconds apart, one at a time (0: at
    # once, in blocks); ``written`` is how much of it the receiver got out before the
    # client closed the connection.
    answer_bytes: int = 2
    drip: float = 0.0
    written: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, body: bytes) -> int:
        with self.lock:
            if self.scripted and json.loads(body)["type"] != self.scripted:
                return 200
            index = len(self.of_type(self.scripted)) - 1
            return self.statuses[min(index, len(self.statuses) - 1)]

    def of_type(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.received if not event or json.loads(r["body"])["type"] == event]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(statuses=[200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.received.append({"headers": dict(self.headers), "body": body})
            if state.delay:
                time.sleep(state.delay)
            status = state.answer(body)
            self.send_response(status)
            self.send_header("Content-Length", str(state.answer_bytes))
            self.end_headers()
            try:
                for sent in range(0, state.answer_bytes, 1 if state.drip else 65536):
                    piece = b"o" * (1 if state.drip else min(65536, state.answer_bytes - sent))
                    self.wfile.write(piece)
                    self.wfile.flush()
                    state.written += len(piece)
                    time.sleep(state.drip)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/countersign"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _assert_signed(world: World, request: dict[str, Any]) -> dict[str, Any]:
    """Verified as a receiver would: with the Standard Webhooks library and the secret."""
    headers, body = request["headers"], request["body"]
    world.agent.refresh_from_db()
    payload = standardwebhooks.Webhook(world.agent.webhook_secret).verify(body, headers)
    assert payload == json.loads(body)
    for wrong_secret, wrong_body in (
        ("whsec_" + "A" * 43 + "=", body),
        (world.agent.webhook_secret, body + b" "),
    ):
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(wrong_secret).verify(wrong_body, headers)
    return dict(payload)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_is_retried_until_it_accepts(
    live_world: World, receiver: Receiver, tmp_path: Any
) -> None:
    receiver.statuses = [500, 503, 200]
    receiver.scripted = "call.rejected"
    env = {"WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1", "WEBHOOK_RETRY_BASE_SECONDS": "0.3"}
    purge_queue()
    with (
        override_settings(WEBHOOK_RETRY_BASE_SECONDS=0.3, WEBHOOK_ALLOW_PRIVATE_NETWORKS=True),
        running_worker(tmp_path=tmp_path, env=env),
    ):
        body = {**SEND_EMAIL, "callback_url": receiver.url}
        call_id = live_world.api().submit(body).json()["id"]
        decide(call_id=call_id, reviewer=live_world.bob, verdict="reject", comment="Not today.")
        # The first attempt comes from the task sent on commit; the retries from the
        # sweep, which beat runs every few seconds (here: the test runs it).
        deliveries = WebhookDelivery.objects.filter(call_id=call_id)

        def delivered() -> bool:
            webhooks.sweep()
            states = set(deliveries.values_list("state", flat=True))
            return states == {WebhookDelivery.State.DELIVERED}

        # Every event's delivery is its own task, sent to the worker in any order: wait,
        # while the worker runs, until the receiver has accepted them all.
        wait_for(delivered, timeout=60, interval=0.2, message="every webhook to be accepted")

    assert sorted(deliveries.values_list("event", flat=True)) == [
        "call.decided",
        "call.pending",
        "call.rejected",
    ]
    delivery = deliveries.get(event="call.rejected")
    assert delivery.attempts == 3
    attempts = list(delivery.attempt_log.order_by("number"))
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 503), (3, 200)]
    rejected = receiver.of_type("call.rejected")
    assert len(rejected) == 3
    gaps = [
        (later.started_at - earlier.started_at).total_seconds()
        for earlier, later in itertools.pairwise(attempts)
    ]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, f"no backoff between attempts: {gaps}"
    assert {r["headers"]["webhook-id"] for r in rejected} == {str(delivery.pk)}
    payload = _assert_signed(live_world, rejected[-1])
    assert payload["type"] == "call.rejected"
    assert payload["data"]["id"] == call_id
    assert payload["data"]["decision"]["comment"] == "Not today."
    assert {r["body"] for r in rejected} == {rejected[0]["body"]}

    # Approval was requested, then decided, then the call ended: the others were accepted
    # at their first attempt, once each.
    others = sorted(json.loads(r["body"])["type"] for r in receiver.received if r not in rejected)
    assert others == ["call.decided", "call.pending"]


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_call_approved_as_it_arrives_asks_no_person(
    world: World, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    """By a policy rule, or by a standing approval: the agent hears that the call was
    decided, never that a person's approval was requested."""
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={"rules": [{"when": 'args.to.endsWith("@example.com")', "then": "approve"}]},
        changed_by=world.alice,
    )
    callback = {"callback_url": receiver.url}
    with django_capture_on_commit_callbacks(execute=False):
        by_rule = world.api().submit({**SEND_EMAIL, **callback}).json()
        asked = (
            world.api()
            .submit(
                {
                    **SEND_EMAIL,
                    **callback,
                    "arguments": {**SEND_EMAIL["arguments"], "to": "x@y.org"},
                }
            )
            .json()
        )
        decide(
            call_id=asked["id"],
            reviewer=world.bob,
            verdict="approve",
            standing_terms=standing.Terms(seconds=3600, match="same", max_uses=1),
        )
        by_standing = (
            world.api()
            .submit(
                {
                    **SEND_EMAIL,
                    **callback,
                    "arguments": {**SEND_EMAIL["arguments"], "to": "x@y.org"},
                }
            )
            .json()
        )
    assert (by_rule["status"], by_standing["status"]) == ("approved", "approved")
    assert by_standing["id"] != asked["id"]

    def events_of(call_id: str) -> list[str]:
        return sorted(
            WebhookDelivery.objects.filter(call_id=call_id).values_list("event", flat=True)
        )

    assert events_of(by_rule["id"]) == ["call.decided"]
    assert events_of(by_standing["id"]) == ["call.decided"]
    assert events_of(asked["id"]) == ["call.decided", "call.pending"]


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_each_event_is_sent_once_and_signed(
    world: World, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    callback = {"callback_url": receiver.url}
    cancelled = world.api().submit({**SEND_EMAIL, **callback}).json()["id"]
    with django_capture_on_commit_callbacks(execute=False):
        cancel_call(call_id=cancelled, agent=world.agent)
        cancel_call(call_id=cancelled, agent=world.agent)  # repeated: no new state
    no_callback = world.api().submit(SEND_EMAIL).json()["id"]
    cancel_call(call_id=no_callback, agent=world.agent)
    assert [d.event for d in WebhookDelivery.objects.order_by("created_at")] == [
        "call.pending",
        "call.cancelled",
    ]
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    WebhookDelivery.objects.exclude(pk=delivery.pk).delete()
    # Its task is on its way: the sweep leaves it alone until it looks lost.
    assert webhooks.sweep() == 0
    WebhookDelivery.objects.update(dispatched_at=timezone.now() - timedelta(minutes=5))
    assert webhooks.sweep() == 1
    assert deliver_webhook.apply(args=[str(delivery.pk)]).successful()
    delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.DELIVERED
    payload = _assert_signed(world, receiver.received[0])
    assert payload["type"] == "call.cancelled"
    assert payload["data"]["status"] == "cancelled"
    assert receiver.received[0]["headers"]["webhook-id"] == str(delivery.pk)
    # A late duplicate of the task finds nothing due and sends nothing.
    assert webhooks.deliver(delivery.pk) == "not_due"
    assert len(receiver.received) == 1


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_TIMEOUT_SECONDS=1)
def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_timeout(
    world: World, receiver: Receiver
) -> None:
    """A byte every 0.3 s keeps each read within the timeout; the whole answer may not take
    longer than it, or a receiver an agent chose would hold a worker past its lease. The
    status came before the body was cut off: it is the receiver's answer (a 2xx accepted
    the webhook, which was sent again and again, then audited as given up)."""
    receiver.answer_bytes, receiver.drip = 40, 0.3
    receiver.statuses = [500, 200]
    call = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call)
    started = time.monotonic()
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING  # the 500: retried
    assert time.monotonic() - started < 4
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    started = time.monotonic()
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED  # the 200
    assert time.monotonic() - started < 4
    attempts = list(delivery.attempt_log.order_by("number"))
    assert [(a.status_code, a.error) for a in attempts] == [(500, ""), (200, "")]
    assert all("cut off: ReadTimeout" in a.response_excerpt for a in attempts)
    assert len(receiver.received) == 2


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_receivers_huge_answer_is_not_read_whole(world: World, receiver: Receiver) -> None:
    receiver.answer_bytes = 200 * 1024 * 1024
    call = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call)
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
    assert len(delivery.attempt_log.get().response_excerpt) == 500
    time.sleep(0.5)
    assert receiver.written < 32 * 1024 * 1024, "the client stopped reading early"


@contextmanager
def a_delivery_to(world: World, answer: Any) -> Iterator[WebhookDelivery]:
    """A new call's webhook delivery to a receiver that answers with ``answer`` (a raw
    HTTP handler), listening until the block ends."""
    server = RawHttpServer(answer)
    try:
        call = world.api().submit({**SEND_EMAIL, "callback_url": f"{server.url}/hook"})
        yield WebhookDelivery.objects.get(call_id=call.json()["id"])
    finally:
        server.close()


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_TIMEOUT_SECONDS=1)
def test_a_receiver_that_drips_its_headers_is_cut_off_at_the_timeout(world: World) -> None:
    """Each byte of the headers arrives within the read timeout; the timeout still bounds
    the attempt as a whole, not only the body read after them."""

    with a_delivery_to(world, drip_headers) as delivery:
        started = time.monotonic()
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING  # to be retried
        assert time.monotonic() - started < 2.5
    assert "ReadTimeout" in delivery.attempt_log.get().error


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_TIMEOUT_SECONDS=1)
def test_a_receiver_that_reads_a_large_body_slowly_is_cut_off_at_the_timeout(
    world: World,
) -> None:
    """A receiver that takes the body in a little at a time, each piece within the write
    timeout, held the worker until it had read all of it (a call's result of megabytes:
    many times the timeout, past the lease, so that another worker sent it again beside it).
    Each send was given the time left when the body's write began, not what was left."""
    listener = socket.create_server(("127.0.0.1", 0))
    taken = []

    def read_slowly() -> None:
        connection, _ = listener.accept()
        with connection:
            while piece := connection.recv(64 * 1024):
                taken.append(len(piece))
                time.sleep(0.02)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    # The body of a call whose result is large (a tool handler's: nothing bounds it).
    WebhookDelivery.objects.filter(pk=delivery.pk).update(body=json.dumps({"r": "x" * (24 << 20)}))
    started = time.monotonic()
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING  # to be retried
    took = time.monotonic() - started
    reader.join(timeout=30)
    listener.close()
    assert took < 2.5, f"the attempt took {took:.1f} s"
    assert sum(taken) < 24 << 20, "the receiver did not get the whole body"
    assert "WriteTimeout" in delivery.attempt_log.get().error


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_receiver_that_accepts_then_hangs_up_mid_answer_has_it_delivered(world: World) -> None:
    """A 2xx whose body the receiver cut short (it promised 100 bytes and closed after 2)
    accepted the webhook all the same: it is not sent again."""

    def answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"ok")
        handler.close_connection = True

    with a_delivery_to(world, answer) as delivery:
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
    attempt = delivery.attempt_log.get()
    assert (attempt.status_code, attempt.error) == (200, "")
    assert "cut off: RemoteProtocolError" in attempt.response_excerpt


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_receivers_compressed_answer_is_read_without_inflating_it_whole(world: World) -> None:
    """Only an excerpt of the answer is kept: a small answer that inflates to 128 MB
    (128 MB of gzip) is inflated no further than what is read of it."""
    bomb = gzip_bomb(128 << 20)

    def answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(bomb)))
        handler.end_headers()
        handler.wfile.write(bomb)

    with a_delivery_to(world, answer) as delivery:
        tracemalloc.start()
        try:
            assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MB at the peak for a {len(bomb)}-byte answer"
    assert delivery.attempt_log.get().response_excerpt == "a" * 500


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_MAX_ATTEMPTS=2)
def test_a_receivers_answer_holding_nul_is_kept_storable(world: World) -> None:
    """PostgreSQL's text cannot hold NUL: the answer's excerpt is kept with U+FFFD in its
    place, rather than the attempt failing to be recorded and resent to no end."""

    def answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        raw_reply(handler, 200, b"ok\x00", "text/plain")

    with a_delivery_to(world, answer) as delivery:
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
    assert delivery.attempt_log.get().response_excerpt == "ok\ufffd"


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_receivers_2xx_in_a_charset_that_is_no_text_encoding_is_delivered(world: World) -> None:
    """Python knows base64 as a codec, which bytes.decode refuses (LookupError): the attempt
    broke, and a receiver that had accepted the webhook was sent it again and again."""

    def answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        raw_reply(handler, 200, b"ok", "text/plain; charset=base64")

    with a_delivery_to(world, answer) as delivery:
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
    assert delivery.attempt_log.get().response_excerpt == "ok"


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_MAX_ATTEMPTS=2)
def test_an_attempt_that_breaks_unexpectedly_is_recorded_and_counted(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A bug in making the attempt still ends it as a failed attempt, logged: the last one
    fails the delivery, instead of each crashing the task and the sweep resending it."""
    call = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call)

    def broken(*args: Any) -> dict[str, str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhooks, "sign", broken)
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.FAILED
    assert [a.error for a in delivery.attempt_log.all()] == ["RuntimeError: a bug"] * 2
    assert "the attempt broke" in caplog.text


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_SECRET_GRACE_SECONDS=3600)
def test_after_a_rotation_both_secrets_verify_during_the_grace_period(
    world: World, receiver: Receiver
) -> None:
    old = world.agent.webhook_secret
    new = registry_services.rotate_webhook_secret(agent=world.agent, rotated_by=None).secret
    call = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    webhooks.deliver(WebhookDelivery.objects.get(call_id=call).pk)
    [request] = receiver.received
    assert len(request["headers"]["webhook-signature"].split()) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])
        assert verify_webhook(secret, request["body"], request["headers"])
    # Once the grace period is over, only the new secret signs.
    type(world.agent).objects.filter(pk=world.agent.pk).update(
        previous_webhook_secrets=[{"secret": old, "until": timezone.now().isoformat()}]
    )
    cancel_call(call_id=call, agent=world.agent)
    webhooks.deliver(WebhookDelivery.objects.get(event="call.cancelled").pk)
    later = receiver.received[-1]
    assert len(later["headers"]["webhook-signature"].split()) == 1
    standardwebhooks.Webhook(new).verify(later["body"], later["headers"])
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(old).verify(later["body"], later["headers"])


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_SECRET_GRACE_SECONDS=3600)
def test_a_receiver_still_on_the_first_secret_verifies_after_two_rotations_until_expired_now(
    world: World, receiver: Receiver
) -> None:
    """A second routine rotation within the grace period dropped the first secret at once:
    a receiver that had not switched yet failed every webhook. Only "expire now" (a leak)
    ends the old secrets before their time."""

    def rotate(**how: bool) -> str:
        registry_services.rotate_webhook_secret(agent=world.agent, rotated_by=None, **how)
        world.agent.refresh_from_db()
        return world.agent.webhook_secret

    first = world.agent.webhook_secret
    second, third = rotate(), rotate()
    call = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    webhooks.deliver(WebhookDelivery.objects.get(call_id=call).pk)
    [request] = receiver.received
    for secret in (first, second, third):
        standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])
    assert len(request["headers"]["webhook-signature"].split()) == 3
    # The second secret leaked: the admin expires the old ones now.
    fourth = rotate(expire_old_now=True)
    cancel_call(call_id=call, agent=world.agent)
    webhooks.deliver(WebhookDelivery.objects.get(event="call.cancelled").pk)
    later = receiver.received[-1]
    assert len(later["headers"]["webhook-signature"].split()) == 1
    standardwebhooks.Webhook(fourth).verify(later["body"], later["headers"])
    for secret in (first, second, third):
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(secret).verify(later["body"], later["headers"])


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_concurrent_deliveries_of_one_attempt_send_it_once(
    live_world: World, receiver: Receiver
) -> None:
    call = ToolCall.objects.get(pk=live_world.api().submit(SEND_EMAIL).json()["id"])
    ToolCall.objects.filter(pk=call.pk).update(callback_url=receiver.url)
    call.refresh_from_db()
    receiver.delay = 0.2
    delivery_id = webhooks.schedule(call, "call.pending")
    results = in_threads(8, lambda _: webhooks.deliver(delivery_id))
    assert sorted(results) == ["delivered"] + ["not_due"] * 7
    assert len(receiver.received) == 1


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_MAX_ATTEMPTS=1)
def test_a_last_attempt_whose_lease_was_taken_over_audits_no_failure(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt held past its lease (a stalled worker) is taken over by another, which
    delivers; the stalled one, its own answer a 500 and its attempt the last, then wrote
    ``call.webhook_failed`` to the trail beside a delivered webhook."""
    receiver.statuses = [500, 200]
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    real_post = webhooks._post
    taken_over: list[str] = []

    def stalled_past_its_lease(attempt: WebhookDelivery) -> webhooks.AttemptResult:
        result = real_post(attempt)
        if attempt.attempts == 1:  # the stalled one: another worker takes its lease over
            taken_over.append(webhooks.deliver(attempt.pk))
        return result

    with monkeypatch.context() as patched:
        patched.setattr(webhooks, "_post", stalled_past_its_lease)
        patched.setattr(webhooks, "LEASE_GRACE_SECONDS", -3600)  # the lease is already over
        webhooks.deliver(delivery.pk)
    assert taken_over == [WebhookDelivery.State.DELIVERED]
    delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.DELIVERED
    assert [a.status_code for a in delivery.attempt_log.all()] == [500, 200]
    assert not AuditEvent.objects.filter(action="call.webhook_failed").exists()


def _deliver_in_a_thread(delivery_id: Any, results: dict[str, str], name: str) -> threading.Thread:
    """``webhooks.deliver`` as a worker of its own runs it, on its own connection; what it
    returned, or the exception it raised, goes to ``results[name]``."""

    def run() -> None:
        try:
            results[name] = webhooks.deliver(delivery_id)
        except Exception as exc:
            results[name] = repr(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_worker_stalled_past_its_lease_right_after_its_claim_records_its_own_attempt(
    live_world: World, receiver: Receiver
) -> None:
    """A worker claims attempt 1, then stalls (here on a lock of the agents' table, which
    its next read joins) past its lease; a second worker takes the delivery over, as
    attempt 2. Each read its attempt's number back after its claim: both read 2, both
    recorded their POST as attempt 2, and the second to finish was refused by the unique
    number (its task raised, its attempt unrecorded), the first having finished the other's
    claim. Each attempt is now the number its worker claimed."""
    call_id = live_world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    row = WebhookDelivery.objects.filter(pk=delivery.pk)
    results: dict[str, str] = {}
    with psycopg.connect(worker_database_url()) as holder:
        holder.execute(f"LOCK TABLE {Agent._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        stalled = _deliver_in_a_thread(delivery.pk, results, "stalled")
        wait_for(lambda: row.filter(attempts=1).exists(), timeout=10, message="the first claim")
        row.update(lease_until=timezone.now() - timedelta(seconds=1))  # its lease lapsed
        taking_over = _deliver_in_a_thread(delivery.pk, results, "taking over")
        wait_for(lambda: row.filter(attempts=2).exists(), timeout=10, message="the takeover")
        holder.rollback()
    stalled.join(timeout=30)
    taking_over.join(timeout=30)
    assert results == {"stalled": "delivered", "taking over": "delivered"}
    assert len(receiver.received) == 2, "two workers, two POSTs"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.lease_until) == ("delivered", 2, None)
    assert [(a.number, a.status_code) for a in delivery.attempt_log.all()] == [(1, 200), (2, 200)]


def _queued_copies(delivery_id: Any) -> list[datetime | None]:
    return queued_copies(webhooks.DELIVER_TASK, delivery_id)


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOK_RESEND_AFTER_SECONDS=1)
def test_a_delivery_whose_task_waits_in_a_slow_queue_has_one_copy_that_can_run(
    live_world: World,
) -> None:
    """A task still queued (the workers busy; here none runs) looks lost to the sweep. Sent
    again every WEBHOOK_RESEND_AFTER_SECONDS, a delivery had one more copy in the queue per
    interval, each of them to be run, in a queue already too slow. Now each copy expires
    when the sweep may send the next, and the next waits as long again as the delivery
    had waited when the last was sent: one copy can run, and the copies grow with the
    log of the wait."""
    purge_queue()
    callback = {"callback_url": "https://receiver.example/hooks"}
    call_id = live_world.api().submit({**SEND_EMAIL, **callback}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    assert len(_queued_copies(delivery.pk)) == 1, "sent once the call was written"
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # beat's sweep, every 0.2 s instead of every 5
        webhooks.sweep()
        time.sleep(0.2)
    copies = _queued_copies(delivery.pk)
    now = timezone.now()
    can_run = [when for when in copies if when is None or when > now]
    assert len(can_run) == 1, f"{len(can_run)} of the {len(copies)} copies can still run"
    # Sent at 0, 1, 2 and 4 s (the next at 8): the copies of every interval were 6.
    assert len(copies) <= 4, f"{len(copies)} copies in the queue"
    purge_queue()


class _Clocks:
    """``timezone.now`` as each process reads it: the machine the code runs as (``on``) is
    ``skews[on]`` off the true time. One test plays several processes in turn."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **skews: timedelta) -> None:
        self.true_now, self.skews, self.on = timezone.now, skews, ""
        monkeypatch.setattr(
            timezone, "now", lambda: self.true_now() + self.skews.get(self.on, timedelta())
        )

    @contextmanager
    def running_as(self, process: str) -> Iterator[None]:
        previous, self.on = self.on, process
        try:
            yield
        finally:
            self.on = previous


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_first_attempt_is_due_at_a_worker_whose_clock_runs_behind_the_web_process(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web process dated the first attempt by its clock, the worker it sent the task to
    read that date by its own: a web process a few seconds ahead scheduled an attempt the
    worker found not due, and the sweep sent it again only a minute later
    (``WEBHOOK_RESEND_AFTER_SECONDS``), when the agent had long been waiting for it."""
    clocks = _Clocks(monkeypatch, web=timedelta(seconds=3))
    with clocks.running_as("web"):
        call_id = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    with clocks.running_as("worker"):
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
    assert len(receiver.received) == 1


@override_settings(
    WEBHOOK_ALLOW_PRIVATE_NETWORKS=True,
    WEBHOOK_RETRY_BASE_SECONDS=0.4,
    CELERY_TASK_ALWAYS_EAGER=True,
)
def test_a_retry_the_sweep_sends_is_due_at_a_worker_whose_clock_runs_behind_the_sweeper(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beat's sweep found a retry due by its clock and marked it sent; the worker, a few
    seconds behind, found it not due; the mark then kept every later sweep from sending it
    for a minute."""
    receiver.statuses = [500, 200]
    clocks = _Clocks(monkeypatch, beat=timedelta(seconds=3))
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING  # the 500
    attempt = webhooks.deliver

    def on_the_worker(delivery_id: Any) -> str:
        with clocks.running_as("worker"):
            return attempt(delivery_id)

    # Eager, the sweep makes the attempt itself: here as the worker its task would reach.
    monkeypatch.setattr(webhooks, "deliver", on_the_worker)
    with clocks.running_as("beat"):
        webhooks.sweep()
        time.sleep(0.5)  # the retry is due now (after 0.2 to 0.4 s)
        webhooks.sweep()
    delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.DELIVERED
    assert [a.status_code for a in delivery.attempt_log.order_by("number")] == [500, 200]


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_an_attempt_under_way_is_not_taken_over_because_its_workers_clock_runs_behind(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose clock ran behind by more than the lease's grace stamped a lease that
    had lapsed when given: another worker took the delivery over while the first was still
    sending it, and the receiver got it twice."""
    clocks = _Clocks(monkeypatch, slow=-timedelta(minutes=2))
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    real_post = webhooks._post
    other_worker: list[str] = []

    def another_worker_looks_meanwhile(attempt: WebhookDelivery) -> webhooks.AttemptResult:
        if clocks.on == "slow":
            with clocks.running_as("other"):
                other_worker.append(webhooks.deliver(attempt.pk))
        return real_post(attempt)

    monkeypatch.setattr(webhooks, "_post", another_worker_looks_meanwhile)
    with clocks.running_as("slow"):
        # Due by any clock: a retry whose time came minutes ago.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            next_attempt_at=timezone.now() - timedelta(minutes=5)
        )
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
    assert other_worker == ["not_due"]
    assert len(receiver.received) == 1


def test_a_calls_events_are_dated_in_the_order_they_happened_by_any_processes_clock(
    world: World, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    """Each event is retried on its own, so they may arrive in any order: the receiver goes
    by the body's ``timestamp``. Dated by the clock of the process that made the change, a
    call approved in a web process a few seconds ahead of the worker that then ran it was
    said to have succeeded before it was approved."""
    clocks = _Clocks(monkeypatch, web=timedelta(seconds=5))
    callback = {"callback_url": "https://receiver.example/hooks"}
    with clocks.running_as("web"), django_capture_on_commit_callbacks(execute=False):
        call_id = world.api().submit({**SEND_EMAIL, **callback}).json()["id"]
        decide(call_id=call_id, reviewer=world.bob, verdict="approve")
    with clocks.running_as("worker"), django_capture_on_commit_callbacks(execute=False):
        assert execute_call.apply(args=(call_id,)).successful()
    bodies = [json.loads(d.body) for d in WebhookDelivery.objects.filter(call_id=call_id)]
    assert [b["data"]["status"] for b in bodies] == ["pending", "approved", "succeeded"]
    by_timestamp = sorted(bodies, key=lambda body: datetime.fromisoformat(body["timestamp"]))
    assert [b["type"] for b in by_timestamp] == ["call.pending", "call.decided", "call.succeeded"]


@override_settings(
    WEBHOOK_ALLOW_PRIVATE_NETWORKS=True,
    WEBHOOK_MAX_ATTEMPTS=3,
    WEBHOOK_RETRY_BASE_SECONDS=0.05,
    CELERY_TASK_ALWAYS_EAGER=True,
)
def test_it_gives_up_after_the_last_attempt_and_audits_it(world: World, receiver: Receiver) -> None:
    receiver.statuses = [500]
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    cancel_call(call_id=call_id, agent=world.agent)
    WebhookDelivery.objects.exclude(event="call.cancelled").delete()
    delivery = WebhookDelivery.objects.get()
    # Without a worker (the embedded mode) the sweep makes every attempt.
    deadline = time.monotonic() + 5
    while delivery.state == WebhookDelivery.State.PENDING and time.monotonic() < deadline:
        webhooks.sweep()
        time.sleep(0.05)
        delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.FAILED
    assert [a.status_code for a in delivery.attempt_log.all()] == [500, 500, 500]
    event = AuditEvent.objects.get(action="call.webhook_failed")
    assert event.data["attempts"] == 3


@override_settings(
    WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_TIMEOUT_SECONDS=1, CELERY_TASK_ALWAYS_EAGER=True
)
def test_the_embedded_sweep_spends_no_more_than_an_attempts_time_on_slow_receivers(
    world: World, receiver: Receiver
) -> None:
    """Without a worker, ``run_sweeps`` makes the attempts in its own loop, between the
    expiries, the executor's recovery and the audit chain's sealing: 200 due deliveries to a
    receiver that never answers held all of those for 200 timeouts (over half an hour at
    10 s). A sweep now stops making attempts once one attempt's time is spent; the next
    sweep takes the rest."""
    receiver.delay = 3  # longer than the timeout: each attempt takes all of it
    for _ in range(3):
        call_id = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
        cancel_call(call_id=call_id, agent=world.agent)
    WebhookDelivery.objects.exclude(event="call.cancelled").delete()
    started = time.monotonic()
    assert webhooks.sweep() == 1
    took = time.monotonic() - started
    assert took < 2.5, f"the sweep took {took:.1f} s"
    waiting = WebhookDelivery.objects.filter(attempts=0)
    assert waiting.count() == 2
    assert not waiting.filter(dispatched_at__isnull=False).exists(), "left for the next sweep"


def test_a_private_callback_is_refused_in_services_mode(world: World) -> None:
    call_id = (
        world.api().submit({**SEND_EMAIL, "callback_url": "http://127.0.0.1:9/hook"}).json()["id"]
    )
    cancel_call(call_id=call_id, agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.FAILED
    [attempt] = delivery.attempt_log.all()
    assert "non-public address" in attempt.error


def test_a_name_resolving_to_an_ipv6_address_carrying_a_private_one_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NAT64's prefix reaches IPv4 through a gateway: 64:ff9b::7f00:1 is 127.0.0.1."""
    real_getaddrinfo = socket.getaddrinfo

    def nat64_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.nat64.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::7f00:1", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", nat64_getaddrinfo)
    callback = "http://hooks.nat64.test:9/hook"
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": callback}).json()["id"]
    cancel_call(call_id=call_id, agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.FAILED
    [attempt] = delivery.attempt_log.all()
    assert "non-public address" in attempt.error
    assert webhooks.is_public("64:ff9b::808:808") and webhooks.is_public("8.8.8.8")
    assert not webhooks.is_public("::ffff:10.0.0.1") and not webhooks.is_public("fd00::1")
    # IPv4-compatible and 6to4 addresses carry an IPv4 address too: as public as it.
    for carried_private in ("::127.0.0.1", "::a9fe:a9fe", "2002:7f00:1::", "2002:a00:1::1"):
        assert not webhooks.is_public(carried_private), carried_private
    assert webhooks.is_public("2002:808:808::1") and not webhooks.is_public("::")


@pytest.mark.parametrize("address", ["fec0::a00:1", "fec0::1", "::ffff:0:7f00:1", "::ffff:0:a00:1"])
def test_a_name_resolving_to_a_site_local_or_ipv4_translated_address_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    """Site-local addresses (fec0::/10) are IPv6's deprecated private networks, still routed
    inside some; IPv4-translated ones (::ffff:0:a.b.c.d, SIIT) reach the IPv4 address they
    carry through a translator. Python counts both as global: they were called."""
    real_getaddrinfo = socket.getaddrinfo

    def private_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.sitelocal.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", private_getaddrinfo)
    callback = "http://hooks.sitelocal.test:9/hook"
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": callback}).json()["id"]
    cancel_call(call_id=call_id, agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.FAILED
    [attempt] = delivery.attempt_log.all()
    assert "non-public address" in attempt.error
    # What they carry or neighbour stays public when it is.
    assert webhooks.is_public("::ffff:0:808:808") and webhooks.is_public("2620:fe::fe")


def test_a_receiver_whose_name_stops_resolving_is_retried_later(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolved when the call was made and no longer does (a DNS outage): a failed
    attempt like a refused connection, recorded and retried; it crashed the delivery task,
    leaving the delivery leased with no attempt recorded."""
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["93.184.216.34"])

    def flaky_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.flaky.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        address = next(answers, None)
        if address is None:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", flaky_getaddrinfo)
    submitted = world.api().submit({**SEND_EMAIL, "callback_url": "https://hooks.flaky.test/h"})
    assert submitted.status_code == 202, submitted.json()
    cancel_call(call_id=submitted.json()["id"], agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.lease_until) == (1, None)
    [attempt] = delivery.attempt_log.all()
    assert "does not resolve" in attempt.error


@pytest.mark.parametrize("slow_lookup", [1, 2])
def test_a_slow_resolver_is_given_up_within_the_attempts_timeout(
    world: World, monkeypatch: pytest.MonkeyPatch, slow_lookup: int
) -> None:
    """The name is looked up twice (the early check, then the connection): a resolver
    slow to answer (5 s a server and try, by default) held the attempt past its timeout,
    and past its lease another worker sent the delivery again beside it."""
    real_getaddrinfo = socket.getaddrinfo
    lookups = itertools.count(1)

    def slow_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.slow.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        if next(lookups) == slow_lookup:
            time.sleep(4)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    submitted = world.api().submit({**SEND_EMAIL, "callback_url": "https://hooks.slow.test/h"})
    cancel_call(call_id=submitted.json()["id"], agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    with override_settings(WEBHOOK_TIMEOUT_SECONDS=1):
        started = time.monotonic()
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING  # to be retried
        took = time.monotonic() - started
    assert took < 2.5, f"the attempt took {took:.1f} s"
    [attempt] = delivery.attempt_log.all()
    assert "resolve" in attempt.error


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
def test_a_slow_resolver_is_given_up_within_the_attempts_timeout_on_private_networks_too(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With private networks allowed (the embedded mode) the name is looked up only as the
    connection is made, by the socket's own ``create_connection``, which no timeout bounds:
    a resolver slow to answer held the attempt past its timeout, and past its lease."""
    real_getaddrinfo = socket.getaddrinfo

    def slow_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.slow.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        time.sleep(4)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 9))]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    submitted = world.api().submit({**SEND_EMAIL, "callback_url": "http://hooks.slow.test:9/h"})
    cancel_call(call_id=submitted.json()["id"], agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    with override_settings(WEBHOOK_TIMEOUT_SECONDS=1):
        started = time.monotonic()
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING  # to be retried
        took = time.monotonic() - started
    assert took < 2.5, f"the attempt took {took:.1f} s"
    [attempt] = delivery.attempt_log.all()
    assert "resolve" in attempt.error


def test_a_receiver_unreachable_at_its_first_address_is_reached_at_the_next(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dual-stack receiver whose first address does not answer (IPv6 listed first on a
    worker without an IPv6 route): every attempt went to that first address alone and
    failed, where a plain connection tries the next. (127.0.0.2 refuses: the receiver
    listens on 127.0.0.1 only; both count as public here.)"""
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    real_getaddrinfo = socket.getaddrinfo

    def dual_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.dual.test":
            return real_getaddrinfo(host, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", dual_getaddrinfo)
    monkeypatch.setattr(webhooks, "is_public", lambda address: address.startswith("127."))
    callback = f"http://hooks.dual.test:{port}/hooks/countersign"
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": callback}).json()["id"]
    cancel_call(call_id=call_id, agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.DELIVERED
    assert len(receiver.received) == 1


def test_an_unreachable_receiver_is_retried_later(world: World) -> None:
    with override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_TIMEOUT_SECONDS=1):
        call_id = (
            world.api()
            .submit({**SEND_EMAIL, "callback_url": "http://127.0.0.1:9/hook"})
            .json()["id"]
        )
        cancel_call(call_id=call_id, agent=world.agent)
        delivery = WebhookDelivery.objects.get(event="call.cancelled")
        assert webhooks.deliver(delivery.pk) == WebhookDelivery.State.PENDING
    delivery.refresh_from_db()
    assert delivery.attempts == 1
    assert delivery.next_attempt_at > delivery.created_at
    assert "ConnectError" in delivery.last_error


def test_the_signature_rejects_old_timestamps() -> None:
    secret, body = "whsec_" + "c2VjcmV0LWtleS1ieXRlcw==", b'{"id": "x"}'
    old = webhooks.sign([secret], "msg_1", int(time.time()) - 600, body)
    assert not webhooks.verify(secret, body, old)
    assert webhooks.verify(secret, body, old, tolerance=700)
    assert not webhooks.verify(secret, body, {**old, "webhook-timestamp": "abc"})
    assert not webhooks.verify(secret, body, {**old, "webhook-signature": "garbage"})


def test_the_servers_verify_refuses_what_standardwebhooks_refuses() -> None:
    """``webhooks.verify`` is the server's own check of a signature: with an empty secret it
    verified a forgery (an empty HMAC key is one anybody can sign with), and a timestamp too
    large for a float or a signature that is not ASCII raised instead of "not verified"."""
    body = b'{"id": "x"}'
    now = int(time.time())
    forged = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": "v1,"
        + base64.b64encode(
            hmac.new(b"", f"msg_1.{now}.".encode() + body, "sha256").digest()
        ).decode(),
    }
    for empty in ("", "whsec_"):
        with pytest.raises(standardwebhooks.webhooks.EmptyWebhookSecretError):
            standardwebhooks.Webhook(empty)
        with pytest.raises(ValueError, match="empty"):
            webhooks.verify(empty, body, forged)
    secret = "whsec_" + "c2VjcmV0LWtleS1ieXRlcw=="
    signed = webhooks.sign([secret], "msg_1", now, body)
    assert webhooks.verify(secret, body, signed)
    for headers in (
        {**signed, "webhook-timestamp": "9" * 400},
        {**signed, "webhook-signature": "v1,\u00e9\u00e9"},
        webhooks.sign([secret], "", now, body),  # no id: nothing to drop duplicates by
    ):
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(secret).verify(body, headers)
        assert webhooks.verify(secret, body, headers) is False, headers


def test_a_dns_answer_that_turns_private_after_the_check_reaches_nothing(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name looks public when checked, then points at this machine."""
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["93.184.216.34"])  # the first answer is public; every later one is not

    def rebinding_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.rebind.test":
            return real_getaddrinfo(host, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    callback = f"http://hooks.rebind.test:{port}/hooks/countersign"
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": callback}).json()["id"]
    cancel_call(call_id=call_id, agent=world.agent)
    delivery = WebhookDelivery.objects.get(event="call.cancelled")
    webhooks.deliver(delivery.pk)
    assert receiver.received == [], "the signed payload reached a private address"
    [attempt] = delivery.attempt_log.all()
    assert "non-public address" in attempt.error


def test_the_docs_name_the_webhook_events_as_they_are_sent() -> None:
    """A receiver matches on the body's ``type``: end-users.md told it an agent's stop
    arrives as ``tool_call.cancelled``, a type no webhook has (it is ``call.cancelled``)."""
    root = Path(__file__).resolve().parents[2]
    events = "pending|decided|succeeded|failed|rejected|expired|cancelled"
    named = {
        (page.name, found)
        for page in (root / "docs").glob("*.md")
        for found in re.findall(rf"`([a-z_]+\.(?:{events}))`", page.read_text())
    }
    assert named, "the docs name the events"
    assert {(page, event) for page, event in named if not event.startswith("call.")} == set()


@override_settings(
    WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_MAX_ATTEMPTS=2000, WEBHOOK_RETRY_BASE_SECONDS=5.0
)
def test_an_attempt_past_the_thousandth_is_still_recorded_and_retried_within_the_cap(
    world: World, receiver: Receiver
) -> None:
    """A deployment retrying for weeks (WEBHOOK_MAX_ATTEMPTS past 1024, the base set in the
    environment: a float): the backoff's doubling went past what a float holds, and each failed attempt raised OverflowError
    instead of being recorded, to be sent again after every lease, never given up."""
    receiver.statuses = [500]
    call_id = world.api().submit({**SEND_EMAIL, "callback_url": receiver.url}).json()["id"]
    delivery = WebhookDelivery.objects.get(call_id=call_id)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=1100)
    deliver_webhook(str(delivery.pk))
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("pending", 1101, 500)
    assert delivery.lease_until is None
    assert [a.number for a in delivery.attempt_log.all()] == [1101]
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 0 < wait <= settings.WEBHOOK_RETRY_MAX_SECONDS


@override_settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_MAX_ATTEMPTS=2)
def test_a_receivers_answer_is_kept_masked(world: World) -> None:
    """A receiver that echoes what it was sent, or its own credentials, in its answer: the
    excerpt the admin's pages show was kept as it came, card numbers and keys in clear."""
    card, key = "4111 1111 1111 1111", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"

    def answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        reply = json.dumps({"error": f"card {card} declined", "api_key": key}).encode()
        raw_reply(handler, 400, reply, "application/json")

    with a_delivery_to(world, answer) as delivery:
        webhooks.deliver(delivery.pk)
    excerpt = delivery.attempt_log.get().response_excerpt
    assert "declined" in excerpt
    assert card not in excerpt and "1111 1111" not in excerpt and key not in excerpt
