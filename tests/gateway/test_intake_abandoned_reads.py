"""A read whose request died between committing the call and running it: the call stays
``received`` and its key in flight until the sweep fails it; a takeover of the key answers
409 until then, and replays the failure after."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals import sweeps
from approvals.execution import runner
from approvals.execution.claim import claim_call
from approvals.models import Status, ToolCall
from approvals.services.calls import abandoned_after
from audit.models import AuditEvent
from gateway.idempotency import IN_FLIGHT_LOCK
from gateway.models import IdempotencyRecord
from tests.conftest import World
from tests.support.probe import Probe, install_probe_tool, stock_call
from tools_registry.policy import (
    MAX_READ_ATTEMPTS,
    MAX_TIMEOUT_SECONDS,
    READ_BACKOFF_MAX_SECONDS,
    Risk,
    read_run_seconds,
)


def _dies_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The web process fails between the call's commit and its claim (what a killed one
    leaves behind, except that this one still marks its key abandoned on the way out)."""

    def died(call_id: Any) -> None:
        raise RuntimeError("the web process died")

    monkeypatch.setattr(runner, "execute", died)


def _orphan(world: World, monkeypatch: pytest.MonkeyPatch, key: str) -> ToolCall:
    with monkeypatch.context() as patch:
        _dies_before_running(patch)
        response = world.api().submit(stock_call(), key=key)
    assert response.status_code == 500
    call = ToolCall.objects.get(request_key=key)
    assert call.status == Status.RECEIVED
    return call


def _abandoned_at(call: ToolCall) -> datetime:
    return abandoned_after(ToolCall.objects.select_related("tool").get(pk=call.pk))


@pytest.fixture
def probe(world: World, probe_tool_cleanup: None) -> Probe:
    return install_probe_tool(world, timeout_seconds=2, max_attempts=3)


def test_the_sweep_fails_a_read_left_received_past_its_longest_run(
    world: World, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = _orphan(world, monkeypatch, "orphan-1")
    # 2 s x 3 attempts + 2 backoffs of at most 2 s, plus the lease grace.
    deadline = call.created_at + timedelta(seconds=10 + 30)
    assert _abandoned_at(call) == deadline

    assert sweeps.fail_abandoned_reads(now=deadline - timedelta(seconds=1)) == 0
    assert ToolCall.objects.get(pk=call.pk).status == Status.RECEIVED

    assert sweeps.run_executor_sweeps(now=deadline).reads_abandoned == 1
    call.refresh_from_db()
    assert call.status == Status.FAILED
    assert call.error["code"] == "abandoned"
    assert call.finished_at == deadline
    event = AuditEvent.objects.get(call_id=call.pk, action="call.abandoned")
    assert event.outcome == "failed"
    assert event.data["waited_seconds"] == 40.0
    # Swept once: a second pass finds nothing, and a late claim from a paused process
    # claims nothing, so the handler never runs for the failed call.
    assert sweeps.fail_abandoned_reads(now=deadline + timedelta(hours=1)) == 0
    assert claim_call(call_id=call.pk) is None
    assert probe.calls == 0


def test_the_key_of_an_abandoned_read_answers_409_until_the_sweep_then_replays(
    world: World, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = _orphan(world, monkeypatch, "orphan-2")
    record = IdempotencyRecord.objects.get(key="orphan-2")
    assert record.state == IdempotencyRecord.State.IN_FLIGHT
    assert record.locked_until <= timezone.now(), "the failing request let its key go"

    # The lock has passed, but the call is not terminal: nothing to replay, and no second
    # call or run either.
    for _ in range(2):
        busy = world.api().submit(stock_call(), key="orphan-2")
        assert busy.status_code == 409, busy.content
        assert busy.json()["error"]["code"] == "idempotency_key_in_use"
        assert busy["Retry-After"] == "1"
    assert ToolCall.objects.filter(request_key="orphan-2").count() == 1
    assert IdempotencyRecord.objects.get(key="orphan-2").state == IdempotencyRecord.State.IN_FLIGHT

    assert sweeps.fail_abandoned_reads(now=_abandoned_at(call)) == 1
    for _ in range(2):
        replay = world.api().submit(stock_call(), key="orphan-2")
        assert replay.status_code == 503, replay.content
        body = replay.json()
        assert body["error"]["code"] == "read_abandoned"
        assert body["error"]["retryable"] is True
        assert body["call"]["id"] == str(call.pk)
        assert body["call"]["status"] == "failed"
    assert probe.calls == 0
    assert ToolCall.objects.filter(request_key="orphan-2").count() == 1
    status = world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert status["status"] == "failed" and status["error"]["code"] == "abandoned"


def test_a_key_taken_over_from_a_process_killed_outright_replays_once_terminal(
    world: World, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = _orphan(world, monkeypatch, "orphan-3")
    # A killed process never lets its key go: the lock runs its full length.
    IdempotencyRecord.objects.filter(key="orphan-3").update(
        locked_until=timezone.now() + IN_FLIGHT_LOCK
    )
    assert world.api().submit(stock_call(), key="orphan-3").status_code == 409
    # The sweep fails the call (and answers the key) before the lock has passed.
    assert sweeps.fail_abandoned_reads(now=_abandoned_at(call)) == 1
    assert world.api().submit(stock_call(), key="orphan-3").status_code == 503
    # Had the sweep not answered the key, a takeover replays the terminal call.
    IdempotencyRecord.objects.filter(key="orphan-3").update(
        state=IdempotencyRecord.State.IN_FLIGHT,
        response_status=None,
        response_body=None,
        locked_until=timezone.now() - timedelta(seconds=1),
    )
    taken_over = world.api().submit(stock_call(), key="orphan-3")
    assert taken_over.status_code == 503
    assert taken_over.json()["call"]["id"] == str(call.pk)
    assert IdempotencyRecord.objects.get(key="orphan-3").state == IdempotencyRecord.State.COMPLETE


def test_a_read_that_ran_is_never_swept(world: World, probe: Probe) -> None:
    assert world.api().submit(stock_call(), key="ran").status_code == 200
    assert sweeps.fail_abandoned_reads(now=timezone.now() + timedelta(days=1)) == 0
    assert ToolCall.objects.get(request_key="ran").status == Status.SUCCEEDED


def test_pending_writes_are_never_swept(world: World) -> None:
    from tests.gateway.conftest import SEND_EMAIL

    assert world.api().submit(SEND_EMAIL).status_code == 202
    assert sweeps.fail_abandoned_reads(now=timezone.now() + timedelta(days=1)) == 0
    assert ToolCall.objects.get().status == Status.PENDING


def test_the_in_flight_lock_outlasts_the_longest_valid_read() -> None:
    longest = read_run_seconds(
        timeout_seconds=MAX_TIMEOUT_SECONDS[Risk.READ], max_attempts=MAX_READ_ATTEMPTS
    )
    # 30 s x 5 attempts + 4 backoffs of at most 2 s.
    assert longest == 158.0
    assert IN_FLIGHT_LOCK.total_seconds() > longest


def test_the_executors_backoff_never_waits_longer_than_the_policy_assumes() -> None:
    from tenacity import RetryCallState, Retrying

    for attempt in range(1, 12):
        state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        waits = [runner.READ_BACKOFF(state) for _ in range(200)]
        assert max(waits) <= READ_BACKOFF_MAX_SECONDS, attempt
