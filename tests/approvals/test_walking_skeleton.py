"""One real path: an agent's write call waits for a reviewer, then runs exactly once on a
real Celery worker; a read runs at once; a rejected call never runs."""

from __future__ import annotations

import pytest
from django.test import Client

from approvals.execution import send
from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall
from tests.conftest import World, sandbox_effects
from tests.support.workers import purge_queue, running_worker, wait_for

REFUND = {
    "tool": "send_email",
    "arguments": {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."},
    "session_id": "run-1",
    "reasoning": "The customer asked for confirmation.",
}


def approve_through_the_web(world: World, call: ToolCall) -> None:
    reviewer = Client()
    reviewer.force_login(world.bob)
    page = reviewer.get(f"/approvals/{call.pk}/")
    assert page.status_code == 200
    response = reviewer.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "comment": "fine", "arguments_hash": call.arguments_hash},
    )
    assert response.status_code == 302


@pytest.mark.worker
def test_an_approved_write_runs_once_on_a_real_worker(live_world: World, tmp_path) -> None:
    purge_queue()
    with running_worker(tmp_path=tmp_path):
        response = live_world.api().submit(REFUND)
        assert response.status_code == 202
        call = ToolCall.objects.get(pk=response.json()["id"])
        assert call.status == Status.PENDING
        assert sandbox_effects() == []

        approve_through_the_web(live_world, call)
        wait_for(
            lambda: ToolCall.objects.get(pk=call.pk).status == Status.SUCCEEDED,
            message="the call to succeed",
        )

    effects = sandbox_effects()
    assert [(e["tool"], e["idempotency_key"], e["deliveries"]) for e in effects] == [
        ("send_email", f"countersign-{call.pk}", 1)
    ]
    status = live_world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert status["status"] == "succeeded"
    assert status["decision"]["verdict"] == "approve"


@pytest.mark.worker
def test_the_same_task_delivered_many_times_runs_the_handler_once(
    live_world: World, tmp_path
) -> None:
    purge_queue()
    with running_worker(tmp_path=tmp_path, concurrency=4):
        call = ToolCall.objects.get(pk=live_world.api().submit(REFUND).json()["id"])
        approve_through_the_web(live_world, call)
        for _ in range(20):  # duplicates racing the first delivery
            execute_call.delay(str(call.pk))
        wait_for(
            lambda: ToolCall.objects.get(pk=call.pk).status == Status.SUCCEEDED,
            message="the call to succeed",
        )
        # Let every duplicate reach a worker before looking.
        wait_for(lambda: _queue_empty(), message="the queue to drain")
        import time

        time.sleep(1.0)

    effects = sandbox_effects()
    assert len(effects) == 1
    assert effects[0]["deliveries"] == 1, "the handler ran more than once"
    call.refresh_from_db()
    assert call.attempts == 1
    assert call.fence == 1


def _queue_empty() -> bool:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL).llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 0


def test_a_read_runs_at_once(world: World) -> None:
    response = world.api().submit(
        {"tool": "get_customer", "arguments": {"customer_id": "cus_0002"}, "session_id": "run-1"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["result"]["name"] == "Grace Hopper"


def test_a_rejected_call_never_runs(world: World, django_capture_on_commit_callbacks) -> None:
    call_id = world.api().submit(REFUND).json()["id"]
    reviewer = Client()
    reviewer.force_login(world.bob)
    call = ToolCall.objects.get(pk=call_id)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = reviewer.post(
            f"/approvals/{call_id}/decide/",
            {
                "verdict": "reject",
                "comment": "Not without the manager.",
                "arguments_hash": call.arguments_hash,
            },
        )
    assert response.status_code == 302
    # After commit a rejection only notifies the agent (long-poll, webhook); nothing runs.
    sent = [getattr(callback, "func", callback) for callback in callbacks]
    assert send.send_execution not in sent, "a rejection must not send anything to the executor"
    call.refresh_from_db()
    assert call.status == Status.REJECTED
    assert sandbox_effects() == []
    status = world.api().get(f"/api/v1/tool-calls/{call_id}").json()
    assert status["decision"] == {
        "verdict": "reject",
        "comment": "Not without the manager.",
        "decided_at": status["decision"]["decided_at"],
    }


def test_an_outsider_gets_403_on_the_detail_page_and_the_decision(world: World) -> None:
    call = ToolCall.objects.get(pk=world.api().submit(REFUND).json()["id"])
    outsider = Client()
    outsider.force_login(world.charlie)
    assert outsider.get(f"/approvals/{call.pk}/").status_code == 403
    response = outsider.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "comment": "", "arguments_hash": call.arguments_hash},
    )
    assert response.status_code == 403
    call.refresh_from_db()
    assert call.status == Status.PENDING
    assert call.decisions.count() == 0
    assert str(call.pk) not in outsider.get("/approvals/").content.decode()
