"""Stopping an agent: its tokens are refused at once with the reason, its calls waiting for
a decision are cancelled with it (reviewers and webhooks are told), nothing of it is
claimed any more, and a stop in the middle of a burst of concurrent submissions leaves no
call pending and none started after it."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, transaction
from django.test import Client
from django.utils import timezone

from approvals.execution import runner
from approvals.execution.claim import claim_call
from approvals.execution.finish import Outcome, finish_call
from approvals.models import Status, ToolCall
from approvals.services.calls import RetryRefused, cancel_call, retry_call
from approvals.services.decisions import AlreadyVoted, CannotRun, NotPending, decide
from approvals.services.recovery import reconcile_call
from approvals.transitions import lock_call
from audit.models import AuditEvent
from gateway.models import WebhookDelivery
from tests.conftest import ApiClient, World, sandbox_effects
from tests.gateway.conftest import GET_CUSTOMER, SEND_EMAIL
from tests.gateway.test_errors import error_of
from tests.support.calls import unknown_call
from tests.support.workers import purge_queue
from tools_registry import hooks, services
from tools_registry.models import Agent, Tool


@pytest.fixture(autouse=True)
def _empty_queue() -> Any:
    purge_queue()
    yield
    purge_queue()


def audited(call_ids: Any) -> list[str]:
    """Call ids as the audit trail's data holds them: whole (the card detector leaves a
    UUID's digit runs alone, Luhn-valid or not)."""
    return sorted(str(call_id) for call_id in call_ids)


def pending_email(world: World, **extra: Any) -> ToolCall:
    response = world.api().submit({**SEND_EMAIL, **extra})
    assert response.status_code == 202, response.content
    return ToolCall.objects.get(pk=response.json()["id"])


def test_a_stop_refuses_every_request_at_once_with_the_reason(world: World) -> None:
    services.stop_agent(agent=world.agent, reason="Leaked refunds: incident 42", stopped_by=None)
    api = world.api()
    call_id = uuid.uuid4()
    for response in (
        api.submit(SEND_EMAIL),
        api.get("/api/v1/tools"),
        api.get(f"/api/v1/tool-calls/{call_id}"),
        api.client.post(
            f"/api/v1/tool-calls/{call_id}/cancel", HTTP_AUTHORIZATION=f"Bearer {world.token}"
        ),
    ):
        error = error_of(response, 403, "agent_stopped")
        assert error["details"]["reason"] == "Leaked refunds: incident 42"
        assert "incident 42" in error["message"]
    assert not ToolCall.objects.exists()


def test_a_stop_cancels_what_waits_and_says_so_to_reviewers_webhooks_and_the_trail(
    world: World, reviewer_client: Client
) -> None:
    waiting = [
        pending_email(world, callback_url="https://agent.example.com/hooks"),
        pending_email(world),
    ]
    read = world.api().submit(GET_CUSTOMER)
    assert read.status_code == 200
    stop = services.stop_agent(agent=world.agent, reason="incident", stopped_by=world.alice)
    assert sorted(stop.cancelled) == sorted(str(c.pk) for c in waiting)
    for call in waiting:
        call.refresh_from_db()
        assert call.status == Status.CANCELLED
        assert call.error == {
            "code": "agent_stopped",
            "message": "The agent was stopped before anyone decided: incident",
            "reason": "incident",
        }
    [event] = AuditEvent.objects.filter(action="agent.stopped")
    assert (event.actor_label, event.agent_name) == ("alice", "support-bot")
    assert event.data["reason"] == "incident"
    assert sorted(event.data["cancelled_calls"]) == audited(stop.cancelled)
    cancelled = AuditEvent.objects.filter(action="call.cancelled")
    assert {(e.actor_label, e.data["reason"]) for e in cancelled} == {("alice", "incident")}
    # The call with a callback URL: told it was asked for, then that it was cancelled, why.
    bodies = {json.loads(d.body)["type"]: json.loads(d.body) for d in WebhookDelivery.objects.all()}
    assert sorted(bodies) == ["call.cancelled", "call.pending"]
    body = bodies["call.cancelled"]
    assert body["data"]["error"]["code"] == "agent_stopped"
    assert body["data"]["error"]["reason"] == "incident"
    page = reviewer_client.get(f"/approvals/{waiting[0].pk}/").content.decode()
    assert "agent_stopped" in page and "incident" in page
    queue = reviewer_client.get("/approvals/").content.decode()
    assert str(waiting[0].pk) not in queue


def test_an_approved_call_of_a_stopped_agent_is_not_claimed(world: World) -> None:
    call = pending_email(world)
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve", comment="ok")
    services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)
    assert runner.execute(call.pk) is None
    call.refresh_from_db()
    assert call.status == Status.FAILED
    assert (call.error["code"], call.error["reason"]) == ("agent_stopped", "incident")
    assert [e for e in sandbox_effects() if e["tool"] == "send_email"] == []
    assert AuditEvent.objects.filter(action="call.execution_refused", call_id=call.pk).exists()


def test_resume_lets_the_tokens_in_and_keeps_the_cancellations(world: World) -> None:
    call = pending_email(world)
    services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)
    assert services.resume_agent(agent=world.agent, resumed_by=world.alice, note="fixed")
    response = world.api().get(f"/api/v1/tool-calls/{call.pk}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert world.api().submit(SEND_EMAIL).status_code == 202
    [event] = AuditEvent.objects.filter(action="agent.resumed")
    assert (event.data["stop_reason"], event.data["note"]) == ("incident", "fixed")
    assert services.resume_agent(agent=world.agent) is False


def test_a_stop_needs_a_reason_and_stopping_twice_changes_nothing(world: World) -> None:
    with pytest.raises(ValueError, match="reason"):
        services.stop_agent(agent=world.agent, reason="  ", stopped_by=None)
    services.stop_agent(agent=world.agent, reason="first", stopped_by=None)
    again = services.stop_agent(agent=world.agent, reason="second", stopped_by=None)
    assert again.already_stopped and again.agent.stop_reason == "first"
    assert AuditEvent.objects.filter(action="agent.stopped").count() == 1


def test_an_edit_saved_from_a_page_loaded_before_the_stop_does_not_resume(world: World) -> None:
    stale = Agent.objects.get(pk=world.agent.pk)
    services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)
    stale.max_rounds_per_session = 3
    services.save_agent(agent=stale, changed_by=world.alice)
    assert Agent.objects.get(pk=world.agent.pk).stop_reason == "incident"


# --- Requests that meet a stop under way -----------------------------------------------------


@pytest.fixture
def stop_in_progress(live_world: World) -> Iterator[tuple[threading.Event, threading.Event]]:
    """A stop that holds its transaction open (a receiver of the stop hook waits), so a test
    can send requests while it is under way: (entered, release)."""
    entered, release = threading.Event(), threading.Event()

    def hold(agent: Agent, reason: str, stopped_by: Any) -> list[str]:
        entered.set()
        release.wait(30)
        return []

    hooks.on_agent_stopped(hold)
    try:
        yield entered, release
    finally:
        release.set()
        hooks._agent_stopped.remove(hold)


def _stop_in_a_thread(world: World) -> threading.Thread:
    def stop() -> None:
        try:
            services.stop_agent(agent=world.agent, reason="mid-flight", stopped_by=None)
        finally:
            connections.close_all()

    thread = threading.Thread(target=stop)
    thread.start()
    return thread


def _in_a_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_submission_that_meets_a_stop_under_way_waits_for_it_and_is_refused(
    live_world: World, stop_in_progress: tuple[threading.Event, threading.Event]
) -> None:
    """Authenticated before the stop committed, the submission waits on the run lock; the
    stop commits; the submission then reads the agent as it is now, stopped."""
    entered, release = stop_in_progress
    stopper = _stop_in_a_thread(live_world)
    assert entered.wait(10)
    submitter, answers = _in_a_thread(lambda: live_world.api().submit(SEND_EMAIL))
    submitter.join(1.0)
    assert submitter.is_alive(), "it waits while the stop is under way"
    release.set()
    stopper.join(10)
    submitter.join(10)
    error_of(answers[0], 403, "agent_stopped")
    assert not ToolCall.objects.exists()


def test_a_claim_that_meets_a_stop_under_way_waits_for_it_and_claims_nothing(
    live_world: World, stop_in_progress: tuple[threading.Event, threading.Event]
) -> None:
    call = pending_email(live_world)
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve", comment="ok")
    entered, release = stop_in_progress
    stopper = _stop_in_a_thread(live_world)
    assert entered.wait(10)
    worker, outcomes = _in_a_thread(lambda: runner.execute(call.pk))
    worker.join(1.0)
    assert worker.is_alive(), "the claim waits while the stop is under way"
    release.set()
    stopper.join(10)
    worker.join(10)
    assert outcomes == [None]
    call.refresh_from_db()
    assert (call.status, call.error["code"]) == (Status.FAILED, "agent_stopped")
    assert call.started_at is None


# --- A stop in the middle of a burst --------------------------------------------------------


@pytest.mark.parametrize("attempt", range(3))
def test_a_stop_during_a_burst_leaves_nothing_pending_and_nothing_started_after_it(
    live_world: World, attempt: int
) -> None:
    """Eight submitters (writes and reads, each read run at once by its request), two
    reviewers approving and running what waits (as workers would), and a stop that lands in
    the middle, all in real threads with their own PostgreSQL connections."""
    world = live_world
    Tool.objects.update(rate_limit_per_agent="")  # the burst is the point, not the limits
    stop_after = 12 + 4 * attempt
    keys = itertools.count()
    stopped = threading.Event()
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def submitter(index: int) -> None:
        api = ApiClient(world.token)
        for n in range(12):
            body = GET_CUSTOMER if n % 3 == 0 else SEND_EMAIL
            body = {**body, "session_id": f"burst-{index}-{n}"}
            response = api.submit(body, key=f"burst-{attempt}-{index}-{next(keys)}")
            code = response.json()["error"]["code"] if response.status_code >= 400 else ""
            with lock:
                answers.append((response.status_code, code))

    def reviewer() -> None:
        while not stopped.is_set() or ToolCall.objects.filter(status=Status.APPROVED).exists():
            for call in ToolCall.objects.filter(status=Status.PENDING)[:5]:
                # Cancelled by the stop, or decided by the other reviewer, meanwhile: fine.
                with contextlib.suppress(NotPending, CannotRun, AlreadyVoted):
                    decide(call_id=call.pk, reviewer=world.bob, verdict="approve", comment="ok")
            for call_id in ToolCall.objects.filter(status=Status.APPROVED).values_list(
                "pk", flat=True
            )[:5]:
                runner.execute(call_id)
            time.sleep(0.01)

    def stopper() -> None:
        while ToolCall.objects.filter(agent=world.agent).count() < stop_after:
            time.sleep(0.005)
        services.stop_agent(agent=world.agent, reason=f"burst {attempt}", stopped_by=world.alice)
        stopped.set()

    def guarded(work: Any, *args: Any) -> None:
        try:
            work(*args)
        except BaseException as exc:
            failures.append(exc)
            stopped.set()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=guarded, args=(submitter, i)) for i in range(8)]
    threads += [threading.Thread(target=guarded, args=(reviewer,)) for _ in range(2)]
    threads.append(threading.Thread(target=guarded, args=(stopper,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert stopped.is_set()

    agent = Agent.objects.get(pk=world.agent.pk)
    calls = list(ToolCall.objects.filter(agent=agent))
    assert not [c for c in calls if c.status == Status.PENDING], "nothing left waiting"
    started_after = [c for c in calls if c.started_at and c.started_at >= agent.stopped_at]
    assert started_after == [], "nothing claimed after the stop"
    [event] = AuditEvent.objects.filter(action="agent.stopped")
    cancelled = {str(c.pk) for c in calls if c.status == Status.CANCELLED}
    assert sorted(event.data["cancelled_calls"]) == audited(cancelled)
    assert all(c.error["code"] == "agent_stopped" for c in calls if c.status == Status.CANCELLED)
    # Every request was answered: run or queued before the stop, refused with it after.
    assert {status for status, _ in answers} <= {200, 202, 403}
    assert {code for status, code in answers if status == 403} <= {"agent_stopped"}
    assert any(status == 403 for status, _ in answers), "the stop landed mid-burst"
    # The oracle: every e-mail the sandbox sent belongs to a call started before the stop.
    executed = {f"countersign-{c.pk}" for c in calls if c.started_at}
    sent = {e["idempotency_key"] for e in sandbox_effects() if e["tool"] == "send_email"}
    assert sent <= executed
    assert timezone.now() >= agent.stopped_at


def test_a_stop_and_a_transaction_holding_one_of_its_calls_both_finish(
    live_world: World,
) -> None:
    """The agent withdraws a call (its webhook queued in the same transaction, a row that
    points at the agent) while a stop waits for that call's row: the withdrawal does not
    wait for the stop in turn, so neither is chosen to fail as a deadlock."""
    call = pending_email(live_world, callback_url="https://agent.example.com/hooks")
    holding = threading.Event()

    def withdraw() -> str:
        with transaction.atomic():
            lock_call(call.pk)
            holding.set()
            time.sleep(1.0)  # the stop now holds the agent and waits for this call
            return cancel_call(call_id=call.pk, agent=live_world.agent).status

    withdrawer, statuses = _in_a_thread(withdraw)
    assert holding.wait(10)
    stopper, stops = _in_a_thread(
        lambda: services.stop_agent(agent=live_world.agent, reason="incident", stopped_by=None)
    )
    withdrawer.join(20)
    stopper.join(20)
    assert statuses == [Status.CANCELLED], "the withdrawal failed"
    assert stops and stops[0].cancelled == [], "the stop failed, or cancelled it again"
    assert WebhookDelivery.objects.filter(call_id=call.pk, event="call.cancelled").count() == 1


def test_an_unknown_call_a_check_holds_during_the_stop_is_still_left_to_a_person(
    live_world: World, settings: Any
) -> None:
    """Reconciliation holds an unknown call (the downstream could not say: escalated, for a
    re-run once it can) while the agent is stopped; the agent is resumed before the next
    check. The stop must still leave the call to a person: the check that then finds no
    effect does not re-run it (docs/exactly-once.md: "The stop does this at once")."""
    from datetime import timedelta

    from approvals import sweeps
    from approvals.services import recovery
    from tests.support.calls import unknown_call
    from tools_registry import registry

    call = unknown_call(live_world)
    spec = registry.get(call.tool.name)
    lookup, reason_of = spec.lookup_fn, recovery.escalation_reason
    holding, release = threading.Event(), threading.Event()

    def down(ctx: Any) -> Any:
        raise ConnectionError("the downstream is down for a minute")

    def held_reason(*args: Any) -> str:
        holding.set()  # the check holds the call's row, and decides
        release.wait(10)
        return reason_of(*args)

    spec.lookup_fn, recovery.escalation_reason = down, held_reason
    try:
        checker, checked = _in_a_thread(sweeps.reconcile_unknown)
        assert holding.wait(10)
        stopper, stops = _in_a_thread(
            lambda: services.stop_agent(agent=live_world.agent, reason="incident", stopped_by=None)
        )
        stopper.join(1.0)
        release.set()
        checker.join(20)
        stopper.join(20)
    finally:
        spec.lookup_fn, recovery.escalation_reason = lookup, reason_of
    assert checked == [{"escalated": 1}] and stops, "the check or the stop failed"
    services.resume_agent(agent=live_world.agent, note="false alarm")
    later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
    assert sweeps.reconcile_unknown(now=later) == {"unchanged": 1}
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and call.left_to_person


def test_an_approved_call_queued_at_the_stop_does_not_run_after_a_resume(world: World) -> None:
    """Approved before the stop, its task still queued (workers busy or down during the
    incident): the stop fails it unrun, so a resume before a worker gets to it does not
    run what the stop stopped."""
    call = pending_email(world)
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve", comment="ok")
    services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)
    call.refresh_from_db()
    assert call.status == Status.FAILED
    assert (call.error["code"], call.error["reason"]) == ("agent_stopped", "incident")
    assert services.resume_agent(agent=world.agent, resumed_by=world.alice, note="fixed")
    assert runner.execute(call.pk) is None  # the queued task, delivered after the resume
    call.refresh_from_db()
    assert call.status == Status.FAILED
    assert [e for e in sandbox_effects() if e["tool"] == "send_email"] == []
    refused = AuditEvent.objects.filter(action="call.execution_refused", call_id=call.pk)
    assert refused.count() == 1


def test_the_resumed_agent_cannot_retry_what_the_stop_failed(world: World) -> None:
    """The stop failed the approved call unrun; once resumed, the agent (the one that was
    stopped) asked to retry it, and it ran on the approval given before the incident. A
    call still wanted is a new call, with its own approval."""
    call = pending_email(world)
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve", comment="ok")
    services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)
    assert services.resume_agent(agent=world.agent, resumed_by=world.alice, note="fixed")
    answer = world.api().client.post(
        f"/api/v1/tool-calls/{call.pk}/retry", HTTP_AUTHORIZATION=f"Bearer {world.token}"
    )
    assert "new call" in error_of(answer, 409, "retry_not_allowed")["message"]
    assert runner.execute(call.pk) is None
    call.refresh_from_db()
    assert (call.status, call.error["code"]) == (Status.FAILED, "agent_stopped")
    assert [e for e in sandbox_effects() if e["tool"] == "send_email"] == []
    assert not AuditEvent.objects.filter(action="call.retry_requested", call_id=call.pk)


@pytest.mark.parametrize("attempt", range(5))
def test_calls_approved_as_the_stop_lands_do_not_run_after_a_resume(
    live_world: World, attempt: int
) -> None:
    """Two reviewers approve the agent's waiting calls in threads of their own while a stop
    lands among them; the agent is resumed; then every call's queued task is delivered.
    Each call was cancelled by the stop or failed by it: none runs."""
    world = live_world
    Tool.objects.update(rate_limit_per_agent="")
    calls = [pending_email(world, session_id=f"stop-{attempt}-{i}") for i in range(12)]
    start = threading.Barrier(3)
    failures: list[BaseException] = []

    def approve(part: list[ToolCall]) -> None:
        try:
            start.wait()
            for call in part:
                with contextlib.suppress(NotPending, CannotRun, AlreadyVoted):
                    decide(call_id=call.pk, reviewer=world.bob, verdict="approve", comment="ok")
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    def stop() -> None:
        try:
            start.wait()
            time.sleep(0.002 * attempt)
            services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=approve, args=(calls[0::2],)),
        threading.Thread(target=approve, args=(calls[1::2],)),
        threading.Thread(target=stop),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    assert services.resume_agent(agent=world.agent, resumed_by=world.alice, note="fixed")
    assert [runner.execute(call.pk) for call in calls] == [None] * len(calls)
    statuses = set(ToolCall.objects.filter(pk__in=[c.pk for c in calls]).values_list(
        "status", flat=True))  # fmt: skip
    assert statuses <= {Status.CANCELLED, Status.FAILED}
    assert [e for e in sandbox_effects() if e["tool"] == "send_email"] == []


def test_a_retry_that_meets_a_stop_under_way_waits_for_it_and_is_refused(
    live_world: World, stop_in_progress: tuple[threading.Event, threading.Event]
) -> None:
    """The agent asks to run a failed write again as a stop is under way: the retry waits
    for the stop, then finds the agent stopped. Had it slipped in, the call would be
    approved past the stop, and run after a resume."""
    call = pending_email(live_world)
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve", comment="ok")
    claim = claim_call(call_id=call.pk)
    assert claim is not None
    refused = Outcome(status=Status.FAILED, error={"code": "busy", "message": "try later"})
    assert finish_call(claim=claim, outcome=refused)
    entered, release = stop_in_progress
    stopper = _stop_in_a_thread(live_world)
    assert entered.wait(10)

    def retry() -> Any:
        try:
            return retry_call(call_id=call.pk, agent=live_world.agent)
        except RetryRefused as exc:
            return exc

    retrier, answers = _in_a_thread(retry)
    retrier.join(1.0)
    assert retrier.is_alive(), "the retry waits while the stop is under way"
    release.set()
    stopper.join(10)
    retrier.join(10)
    assert isinstance(answers[0], RetryRefused), answers
    call.refresh_from_db()
    assert call.status == Status.FAILED
    assert services.resume_agent(agent=live_world.agent)
    assert runner.execute(call.pk) is None
    assert [e for e in sandbox_effects() if e["tool"] == "send_email"] == []


@pytest.mark.parametrize("attempt", range(5))
def test_unknown_calls_reconciled_as_the_stop_lands_do_not_run_after_a_resume(
    live_world: World, attempt: int
) -> None:
    """Reconciliation finds no effect and sends the agent's unknown calls to run again while
    a stop lands among them; the agent is resumed; then every re-run's task is delivered.
    Each call is left to a person: none runs again by itself."""
    world = live_world
    calls = [unknown_call(world) for _ in range(10)]
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def guarded(work: Any) -> None:
        try:
            start.wait()
            work()
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    def reconcile() -> None:
        for call in calls:
            reconcile_call(call_id=call.pk, skip_locked=True)

    def stop() -> None:
        time.sleep(0.003 * attempt)
        services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in (reconcile, stop)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    assert services.resume_agent(agent=world.agent, resumed_by=world.alice, note="fixed")
    assert [runner.execute(call.pk) for call in calls] == [None] * len(calls)
    for call in calls:
        call.refresh_from_db()
        assert (call.status, call.left_to_person) == (Status.UNKNOWN, True), call.status
    assert [e for e in sandbox_effects() if e["tool"] == "send_email"] == []
