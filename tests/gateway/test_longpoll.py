"""GET /tool-calls/{id}?wait=N: answers as soon as the status changes, holds no database
connection while it waits, and answers after N seconds when nothing happens.

What woke a request is observed (``tests.support.longpoll``: a status message, or the
clock), not how fast it answered: speed belongs in bench/."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import override_settings

from approvals.models import ToolCall
from approvals.services.calls import cancel_call, expire_call
from approvals.services.decisions import decide
from gateway import longpoll
from tests.conftest import ApiClient, World
from tests.gateway.conftest import SEND_EMAIL
from tests.support.link import TcpLink
from tests.support.longpoll import LongPollSpy
from tests.support.web import running_gunicorn
from tests.support.workers import purge_queue, wait_for
from tools_registry import services as registry_services
from tools_registry.models import Agent, Tool


def _poll(token: str, call_id: str, query: str) -> tuple[float, int, dict[str, Any]]:
    """One long-poll; returns when it was answered (monotonic), its status and body."""
    try:
        response = ApiClient(token).get(f"/api/v1/tool-calls/{call_id}?{query}")
        return time.monotonic(), response.status_code, response.json()
    finally:
        connections.close_all()


def _pending_call(world: World, session: str = "run-1") -> str:
    return world.api().submit({**SEND_EMAIL, "session_id": session}).json()["id"]


def _reject(world: World, call_id: str, comment: str = "Not today.") -> float:
    decide(call_id=call_id, reviewer=world.bob, verdict="reject", comment=comment)
    return time.monotonic()


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_returns_promptly_when_a_reviewer_decides(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = LongPollSpy(monkeypatch)
    for verdict in ("reject", "approve", "reject"):
        spy.reset()
        call_id = _pending_call(live_world)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(_poll, live_world.token, call_id, "wait=20")
            spy.wait_until_waiting()
            assert not waiting.done()
            decide(call_id=call_id, reviewer=live_world.bob, verdict=verdict, comment="decided")
            _, status, body = waiting.result(timeout=30)
        assert status == 200
        assert body["status"] == ("rejected" if verdict == "reject" else "approved")
        assert body["decision"]["verdict"] == verdict
        assert spy.woken_by_a_message() == [True], (
            "the decision's status message ended the wait, not a recheck or the deadline",
            spy.pauses(),
        )


@pytest.mark.django_db(transaction=True)
@override_settings(WEB_THREADS=32)  # threads enough for 15 waits (long_polls_leave_a_quarter)
def test_waiting_requests_hold_no_database_connection(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More waiters than the pool has connections (10): if a waiter kept its connection,
    # the others and the reviewer below would queue behind them.
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    call_ids = [_pending_call(live_world, session=f"s{i}") for i in range(15)]
    connection.close()
    pool = connection.pool
    spy = LongPollSpy(monkeypatch)
    with ThreadPoolExecutor(15) as executor:
        waiters: list[Future] = [
            executor.submit(_poll, live_world.token, call_id, "wait=15") for call_id in call_ids
        ]

        def borrowed() -> int:
            stats = pool.get_stats()
            return stats["pool_size"] - stats["pool_available"]

        # Once every waiter has read its call and sat down to wait, none holds a connection.
        spy.wait_until_waiting(count=15)
        wait_for(lambda: borrowed() == 0, timeout=8, interval=0.05, message="idle waiters")
        assert not any(waiter.done() for waiter in waiters)
        for index, call_id in enumerate(call_ids):
            if index % 3 == 0:
                cancel_call(call_id=call_id, agent=live_world.agent)
            elif index % 3 == 1:
                _reject(live_world, call_id)
            else:
                ToolCall.objects.filter(pk=call_id).update(expires_at=time_in_past())
                assert expire_call(call_id=call_id)
        results = [waiter.result(timeout=30) for waiter in waiters]
    assert [body["status"] for _, _, body in results] == [
        ("cancelled", "rejected", "expired")[index % 3] for index in range(15)
    ]
    # Each was woken by its own call's change, not by a recheck or its deadline.
    assert spy.woken_by_a_message() == [True] * 15, spy.pauses()


def time_in_past() -> Any:
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() - timedelta(seconds=1)


def test_nothing_happens_and_the_wait_ends(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    call_id = _pending_call(world)
    spy = LongPollSpy(monkeypatch)
    started = time.monotonic()
    response = world.api().get(f"/api/v1/tool-calls/{call_id}?wait=1")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert elapsed >= 0.9, "it waited its second"
    # One pause, ended by the clock at the deadline: no message, no second pause after it.
    assert spy.pauses() == [[False]]


def test_a_terminal_call_or_a_stale_seen_answers_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = _pending_call(world)
    _reject(world, call_id)
    spy = LongPollSpy(monkeypatch)
    for query in ("wait=30", "wait=30&seen=pending"):
        response = world.api().get(f"/api/v1/tool-calls/{call_id}?{query}")
        assert response.json()["status"] == "rejected"
        assert not spy.waited, f"{query}: answered without waiting"


def test_the_wait_is_bounded(world: World) -> None:
    call_id = _pending_call(world)
    for query, path in (
        ("wait=61", "query.wait"),
        ("wait=-1", "query.wait"),
        ("wait=soon", "query.wait"),
        ("wait=nan", "query.wait"),
        ("seen=" + "x" * 40, "query.seen"),
    ):
        response = world.api().get(f"/api/v1/tool-calls/{call_id}?{query}")
        assert response.status_code == 400, query
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        # The parameter is named, as a body's problems are: no body was sent to fix.
        assert [d["path"] for d in error["details"]] == [path], query
        assert path in error["message"] and "body" not in error["suggestion"], query
    nan = world.api().get(f"/api/v1/tool-calls/{call_id}?wait=nan").json()["error"]
    assert "finite number" in nan["details"][0]["message"]


def test_a_call_id_that_is_no_uuid_is_named_as_the_path_parameter(world: World) -> None:
    for method, path in (("get", ""), ("post", "/cancel"), ("post", "/retry")):
        api = world.api()
        response = getattr(api.client, method)(
            f"/api/v1/tool-calls/not-a-uuid{path}", HTTP_AUTHORIZATION=f"Bearer {api.token}"
        )
        assert response.status_code == 400, path
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert [d["path"] for d in error["details"]] == ["path.call_id"]
        assert set(error["details"][0]) == {"path", "message"}


def test_another_agents_call_is_404_without_waiting(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = _pending_call(world)
    other = Agent.objects.create(name="other-bot", owner=world.alice)
    _, token = registry_services.issue_token(agent=other)
    spy = LongPollSpy(monkeypatch)
    response = ApiClient(token).get(f"/api/v1/tool-calls/{call_id}?wait=10")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "call_not_found"
    assert not spy.waited, "answered without waiting"


@pytest.mark.django_db(transaction=True)
@override_settings(REDIS_URL="")
def test_the_embedded_mode_polls_and_still_answers_promptly(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = _pending_call(live_world)
    spy = LongPollSpy(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_poll, live_world.token, call_id, "wait=30")
        spy.wait_until_waiting()
        decided_at = _reject(live_world, call_id)
        answered_at, _, body = waiting.result(timeout=60)
    assert body["status"] == "rejected"
    assert spy.pauses() == [[]], "no Redis: it polled the database"
    # Polling (every 0.5 s) sees the change long before the 30 s wait would have ended; a
    # wait that only looked again at its deadline would answer 30 s after it started.
    assert answered_at - decided_at < 15


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ended_by", ["revoked token", "stopped agent"])
def test_a_long_poll_whose_token_is_revoked_or_agent_stopped_meanwhile_gets_no_answer(
    live_world: World, monkeypatch: pytest.MonkeyPatch, ended_by: str
) -> None:
    """Authenticated when it arrived, the request is asked again after each pause: a token
    revoked (a leak found) while it waits is not handed the call's decision or result."""
    from tools_registry.models import AgentToken

    spy = LongPollSpy(monkeypatch)
    call_id = _pending_call(live_world)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_poll, live_world.token, call_id, "wait=20")
        spy.wait_until_waiting()
        if ended_by == "revoked token":
            for token in AgentToken.objects.filter(agent=live_world.agent):
                registry_services.revoke_token(token=token)
            decide(call_id=call_id, reviewer=live_world.bob, verdict="approve", comment="ok")
        else:
            registry_services.stop_agent(agent=live_world.agent, reason="incident 7")  # cancels
        _, status, body = waiting.result(timeout=30)
    expected = (401, "not_authenticated") if ended_by == "revoked token" else (403, "agent_stopped")
    assert (status, body["error"]["code"]) == expected, body


@pytest.mark.django_db(transaction=True)
@override_settings(MAX_WAITS_PER_AGENT=2)
def test_one_agent_holds_at_most_its_waits_while_another_agent_still_waits(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each long-poll holds a web thread and a Redis connection: without a limit one agent's
    long-polls took every thread of the web processes, and every other agent's requests
    queued behind them. Past the agent's places its next wait is refused at once (429,
    retryable, with Retry-After); a call with nothing to wait for is still answered; another
    agent waits as before; and the places come back when the waits end."""
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    held = [_pending_call(live_world, session=f"s{i}") for i in range(2)]
    extra = _pending_call(live_world, session="extra")
    ended = _pending_call(live_world, session="ended")
    _reject(live_world, ended)
    other = Agent.objects.create(name="other-bot", owner=live_world.alice)
    other.allowed_tools.add(live_world.tools["send_email"])
    _, other_token = registry_services.issue_token(agent=other)
    others_call = ApiClient(other_token).submit(SEND_EMAIL).json()["id"]
    connection.close()
    spy = LongPollSpy(monkeypatch)
    with ThreadPoolExecutor(3) as executor:
        waiters = [executor.submit(_poll, live_world.token, call_id, "wait=20") for call_id in held]
        spy.wait_until_waiting(count=2)

        refused = live_world.api().get(f"/api/v1/tool-calls/{extra}?wait=20")
        assert refused.status_code == 429, refused.json()
        error = refused.json()["error"]
        assert (error["code"], error["retryable"]) == ("too_many_waits", True)
        assert int(refused.headers["Retry-After"]) >= 1
        # Nothing to wait for needs no place: an ended call, a stale seen, a wait of 0.
        for query in (f"{ended}?wait=20", f"{extra}?wait=20&seen=received", f"{extra}?wait=0"):
            answered = live_world.api().get(f"/api/v1/tool-calls/{query}")
            assert answered.status_code == 200, (query, answered.json())
        assert len(spy.pauses()) == 2, "none of them waited"

        # Another agent's long-poll is not counted against this one's places: it waits.
        theirs = executor.submit(_poll, other_token, others_call, "wait=20")
        spy.wait_until_waiting(count=3)
        assert not any(waiter.done() for waiter in [*waiters, theirs])
        for call_id in held:
            cancel_call(call_id=call_id, agent=live_world.agent)
        cancel_call(call_id=others_call, agent=other)
        results = [waiter.result(timeout=30) for waiter in [*waiters, theirs]]
    assert [(status, body["status"]) for _, status, body in results] == [(200, "cancelled")] * 3
    # The ended waits gave their places back.
    spy.reset()
    again = live_world.api().get(f"/api/v1/tool-calls/{extra}?wait=1")
    assert (again.status_code, again.json()["status"]) == (200, "pending")
    assert spy.pauses() == [[False]], "it waited its second"


@pytest.mark.django_db(transaction=True)
@override_settings(WEB_THREADS=4, MAX_WAITS_PER_AGENT=20)
def test_long_polls_leave_a_quarter_of_the_threads_to_requests_that_do_not_wait(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many agents' long-polls, each within its own limit, took every web thread of a
    process together: reviewers' pages and every submission waited behind them. Of 4
    threads, 3 may wait; the next wait is refused at once (429, retryable), a request that
    does not wait is answered, and a thread that a wait gives back is taken again."""
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    held = [_pending_call(live_world, session=f"s{i}") for i in range(3)]
    extra = _pending_call(live_world, session="extra")
    connection.close()
    spy = LongPollSpy(monkeypatch)
    with ThreadPoolExecutor(4) as executor:
        waiters = [executor.submit(_poll, live_world.token, call_id, "wait=20") for call_id in held]
        spy.wait_until_waiting(count=3)

        refused = live_world.api().get(f"/api/v1/tool-calls/{extra}?wait=20")
        assert refused.status_code == 429, refused.json()
        error = refused.json()["error"]
        assert (error["code"], error["retryable"]) == ("too_many_waits", True), error
        assert "threads" in error["message"] and "Retry-After" in refused.headers
        answered = live_world.api().get(f"/api/v1/tool-calls/{extra}")
        assert (answered.status_code, answered.json()["status"]) == (200, "pending")

        cancel_call(call_id=held[0], agent=live_world.agent)
        assert waiters[0].result(timeout=30)[1] == 200
        with ThreadPoolExecutor(1) as elsewhere:  # a thread the spy has not seen
            again = elsewhere.submit(_poll, live_world.token, extra, "wait=20")
            spy.wait_until_waiting(count=4)  # the first's thread taken again
            assert not again.done()
            for call_id in [*held[1:], extra]:
                cancel_call(call_id=call_id, agent=live_world.agent)
            results = [waiter.result(timeout=30) for waiter in [*waiters[1:], again]]
    assert [(status, body["status"]) for _, status, body in results] == [(200, "cancelled")] * 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("threads", "waiting"), [(1, 0), (5, 3)])
def test_long_polls_hold_at_most_three_in_four_threads_rounded_down(
    live_world: World, monkeypatch: pytest.MonkeyPatch, threads: int, waiting: int
) -> None:
    """Three in four, rounded down: a process of one thread (gunicorn's sync workers) lets
    no long-poll wait, since one that took its only thread held up every other request of
    the process until its deadline; of 5 threads 3 wait, where 4 (all but one) did."""
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    held = [_pending_call(live_world, session=f"s{i}") for i in range(waiting)]
    extra = _pending_call(live_world, session="extra")
    connection.close()
    spy = LongPollSpy(monkeypatch)
    with override_settings(WEB_THREADS=threads), ThreadPoolExecutor(max(1, waiting)) as executor:
        waiters = [executor.submit(_poll, live_world.token, call_id, "wait=20") for call_id in held]
        if waiting:
            spy.wait_until_waiting(count=waiting)
        refused = live_world.api().get(f"/api/v1/tool-calls/{extra}?wait=20")
        assert refused.status_code == 429, refused.json()
        error = refused.json()["error"]
        assert (error["code"], error["retryable"]) == ("too_many_waits", True), error
        assert "Retry-After" in refused.headers
        if threads == 1:
            assert "one request at a time" in error["message"], error
        # What does not wait is answered: a read without wait, a call with a stale seen.
        for query in (f"{extra}", f"{extra}?wait=20&seen=received"):
            answered = live_world.api().get(f"/api/v1/tool-calls/{query}")
            assert (answered.status_code, answered.json()["status"]) == (200, "pending")
        assert len(spy.pauses()) == waiting, "only the admitted long-polls waited"
        for call_id in [*held, extra]:
            cancel_call(call_id=call_id, agent=live_world.agent)
        results = [waiter.result(timeout=30) for waiter in waiters]
    outcomes = [(status, body["status"]) for _, status, body in results]
    assert outcomes == [(200, "cancelled")] * waiting


@pytest.mark.django_db(transaction=True)
def test_a_change_made_while_redis_failed_ends_the_wait_that_falls_back_to_polling(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis cut mid-wait: the change made meanwhile was published to nobody, and the wait
    goes on polling the database. It still compares with the status it started from: taken
    afresh as it fell back, the new status was the one waited to change, until the deadline."""
    target = urlsplit(settings.REDIS_URL)
    link = TcpLink((target.hostname or "127.0.0.1", target.port or 6379))
    sat_down, go_on = threading.Event(), threading.Event()
    next_message = longpoll._next_message

    def held_next_message(pubsub: Any, timeout: float, *rest: Any) -> bool:
        # The first pause starts only once the test has cut Redis and changed the call.
        sat_down.set()
        go_on.wait(timeout=30)
        return next_message(pubsub, timeout, *rest)

    monkeypatch.setattr(longpoll, "_next_message", held_next_message)
    try:
        with override_settings(REDIS_URL=f"redis://127.0.0.1:{link.port}{target.path}"):
            call_id = _pending_call(live_world)
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(_poll, live_world.token, call_id, "wait=30")
                assert sat_down.wait(timeout=30)
                link.cut()
                # Approved, not ended: only the change of status ends the wait. Its
                # wake-up is lost with Redis.
                decide(call_id=call_id, reviewer=live_world.bob, verdict="approve", comment="ok")
                resumed = time.monotonic()
                go_on.set()
                answered_at, status, body = waiting.result(timeout=60)
    finally:
        link.close()
        purge_queue()  # the approved call's execution, which no worker here runs
    assert (status, body["status"]) == (200, "approved"), body
    # Polling every 0.5 s sees the change at once; waiting for another one, it answered
    # only at the 30 s deadline.
    assert answered_at - resumed < 10


@pytest.mark.django_db(transaction=True)
def test_a_sync_gunicorn_worker_lets_no_long_poll_take_its_only_thread(
    live_world: World, django_db_blocker: Any, tmp_path: Path
) -> None:
    """gunicorn's sync worker serves one request at a time (WEB_THREADS=1): a long-poll
    that waited held up every other request of the process until its deadline. It is
    refused at once, and what does not wait is answered."""
    call_id = _pending_call(live_world)
    auth = {"Authorization": f"Bearer {live_world.token}"}
    with django_db_blocker.unblock(), running_gunicorn(tmp_path=tmp_path, threads=1) as web:
        started = time.monotonic()
        refused = httpx.get(f"{web.url}/api/v1/tool-calls/{call_id}?wait=20", headers=auth)
        assert time.monotonic() - started < 10, "answered at once, not at the deadline"
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_waits"
        read = httpx.get(f"{web.url}/api/v1/tool-calls/{call_id}", headers=auth)
        assert (read.status_code, read.json()["status"]) == (200, "pending")
