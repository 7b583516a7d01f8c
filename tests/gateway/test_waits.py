"""The places of requests that wait for a call to end (``gateway.waits``): one count per
agent for its REST long-polls and its MCP waits together; while Redis, which counts them,
cannot be reached, a long-poll is bounded by its process's threads for waits alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
from django.db import connection
from django.test import override_settings

from gateway import waits
from gateway.mcp import waiting
from tests.conftest import World
from tests.gateway.test_longpoll import _pending_call, _poll, _reject
from tests.support.longpoll import LongPollSpy
from tools_registry.models import Agent, Tool


@pytest.mark.django_db(transaction=True)
@override_settings(MAX_WAITS_PER_AGENT=1)
def test_a_long_poll_and_an_mcp_wait_share_the_agents_places(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    polled, waited = _pending_call(live_world, "s1"), _pending_call(live_world, "s2")
    connection.close()
    spy = LongPollSpy(monkeypatch)
    with ThreadPoolExecutor(1) as executor:
        long_poll = executor.submit(_poll, live_world.token, polled, "wait=20")
        spy.wait_until_waiting()
        # The long-poll holds the agent's one place: an MCP wait gets none.
        with pytest.raises(waits.TooManyWaits):
            anyio.run(
                lambda: waiting.until_settled(agent=live_world.agent, call_id=waited, timeout=5)
            )
        _reject(live_world, polled)
        assert long_poll.result(timeout=30)[2]["status"] == "rejected"
    # And back: an MCP wait that holds the place leaves none for a long-poll.
    waits.places.take(live_world.agent.pk, "an-mcp-wait")
    try:
        refused = live_world.api().get(f"/api/v1/tool-calls/{waited}?wait=5")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_waits"
    finally:
        waits.places.give_back(live_world.agent.pk, "an-mcp-wait")
    assert live_world.api().get(f"/api/v1/tool-calls/{waited}?wait=1").status_code == 200


@pytest.mark.django_db(transaction=True)
@override_settings(WEB_THREADS=4)
def test_a_long_poll_while_redis_is_down_polls_within_the_processs_threads(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis, which counts an agent's places, cannot be reached: a long-poll still waits
    (polling the database, as without Redis), counted against this process's threads for
    waits alone, rather than every agent's waits failing for as long as Redis is away."""
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    held = [_pending_call(live_world, f"s{i}") for i in range(3)]
    extra = _pending_call(live_world, "extra")
    connection.close()
    spy = LongPollSpy(monkeypatch)
    with (
        override_settings(REDIS_URL="redis://127.0.0.1:1/0"),
        ThreadPoolExecutor(3) as executor,
    ):
        waiters = [executor.submit(_poll, live_world.token, call_id, "wait=20") for call_id in held]
        spy.wait_until_waiting(count=3)
        # Three of the process's 4 threads wait: the fourth is kept for what does not wait.
        refused = live_world.api().get(f"/api/v1/tool-calls/{extra}?wait=5")
        assert refused.status_code == 429, refused.json()
        assert live_world.api().get(f"/api/v1/tool-calls/{extra}").json()["status"] == "pending"
        for call_id in held:
            _reject(live_world, call_id)
        results = [waiter.result(timeout=30) for waiter in waiters]
    assert [(status, body["status"]) for _, status, body in results] == [(200, "rejected")] * 3
    assert spy.pauses() and all(p == [] for p in spy.pauses()), "no Redis: it polled"
