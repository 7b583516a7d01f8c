"""A submission waits on PostgreSQL as few times as its guarantees allow (counted in
libpq's own trace), and a read's answer is stored in the transaction that stores its
result: the answer the agent gets and the one its key replays commit together with the
result, or, when the result is discarded (its lease was taken over while the tool ran),
the answer is the call as it then stands."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from approvals.execution.finish import expire_lease
from approvals.models import Status, ToolCall
from audit.models import AuditEvent
from gateway.models import IdempotencyRecord
from tests.conftest import World
from tests.gateway.conftest import GET_CUSTOMER, SEND_EMAIL
from tests.support.pgtrace import traced
from tests.support.probe import install_probe_tool, stock_call

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_answer_commits_with_the_result_in_one_exchange(live_world: World) -> None:
    api = live_world.api()
    api.submit(GET_CUSTOMER, key="warm-up")  # every statement prepared once, as in service
    with traced() as trace:
        response = api.submit(GET_CUSTOMER, key="k-1")
    assert response.status_code == 200, response.content
    call = ToolCall.objects.get(request_key="k-1")
    assert call.status == Status.SUCCEEDED
    record = IdempotencyRecord.objects.get(key="k-1")
    assert record.state == IdempotencyRecord.State.COMPLETE
    assert (record.response_status, record.call_id) == (200, call.pk)
    assert record.response_body["body"] == response.json()
    # The read gave its connection back to the pool while its tool ran (for the process's
    # other requests) and borrowed one again, maybe another: the finish is on the last.
    last = trace[-1].exchanges()[-1]
    # The finish's exchange: the result's move, its event, the stored answer (the key's
    # record bound 'complete'), COMMIT. No read of the call nor write of the record follows.
    assert any("\tBind\t" in line and "'succeeded'" in line for line in last)
    assert any("\tBind\t" in line and "'complete'" in line for line in last)
    assert any('"COMMIT"' in line for line in last)
    # The token; intake's batch; known counterparties; the call with its event and COMMIT;
    # the claim's row lock; its move, event and COMMIT; the handler's query; the finish.
    assert sum(read.round_trips for read in trace) == 8
    replay = api.submit(GET_CUSTOMER, key="k-1")
    # Byte for byte: the first answer is sent as stored, not in the handler's key order.
    assert replay.status_code == 200 and replay.content == response.content
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_a_write_waits_four_times(live_world: World) -> None:
    api = live_world.api()
    api.submit(SEND_EMAIL, key="warm-up")  # every statement prepared once, as in service
    with traced() as trace:
        response = api.submit(SEND_EMAIL, key="k-1")
    assert response.status_code == 202, response.content
    (write,) = trace
    # The token; intake's batch (run lock, token again, key, tool, round, standing approvals);
    # known counterparties; the call, its event, the stored answer and COMMIT.
    assert write.round_trips == 4
    last = write.exchanges()[-1]
    assert any("\tBind\t" in line and "'pending'" in line for line in last), "the call's INSERT"
    assert any("\tBind\t" in line and "'call.submitted'" in line for line in last)
    assert any("\tBind\t" in line and "'complete'" in line for line in last)
    assert any('"COMMIT"' in line for line in last)
    call = ToolCall.objects.get(request_key="k-1")
    assert call.status == Status.PENDING
    assert IdempotencyRecord.objects.get(key="k-1").call_id == call.pk
    assert AuditEvent.objects.filter(action="call.submitted", call_id=call.pk).exists()


def test_a_result_discarded_after_its_lease_was_taken_over_is_not_the_answer(
    live_world: World, probe_tool_cleanup: None
) -> None:
    probe = install_probe_tool(live_world)
    probe.hold = threading.Event()
    answers: list[Any] = []

    def submit() -> None:
        try:
            answers.append(live_world.api().submit(stock_call(), key="k-stale"))
        finally:
            connections.close_all()

    request = threading.Thread(target=submit)
    request.start()
    try:
        deadline = time.monotonic() + 10
        while probe.calls == 0:
            assert time.monotonic() < deadline, "the tool never ran"
            time.sleep(0.01)
        call = ToolCall.objects.get(request_key="k-stale")
        # The worker went silent past its lease (as the sweep finds it): the call is taken away.
        assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))
    finally:
        probe.hold.set()
        request.join(30)
    (response,) = answers
    body = response.json()
    assert body["error"]["details"]["tool_code"] == "lease_expired", body
    # No tool said no: the read outlived its lease, and a new request may well be answered
    # (not 422, "the tool refused this request and will answer the same again").
    assert (response.status_code, body["error"]["retryable"]) == (502, True), body
    assert body["call"]["status"] == Status.FAILED and body["call"]["result"] is None
    call.refresh_from_db()
    assert (call.status, call.result, call.error["code"]) == (Status.FAILED, None, "lease_expired")
    assert AuditEvent.objects.filter(action="call.stale_result_discarded", call_id=call.pk).exists()
    record = IdempotencyRecord.objects.get(key="k-stale")
    assert record.state == IdempotencyRecord.State.COMPLETE
    assert (record.response_status, record.response_body["body"]) == (response.status_code, body)
    replay = live_world.api().submit(stock_call(), key="k-stale")
    assert (replay.status_code, replay.json()) == (response.status_code, body)
