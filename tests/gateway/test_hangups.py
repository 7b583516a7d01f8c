"""A long-poll whose client hung up gives its web thread and its agent's place back within
a second or two, not at its deadline: against a real server process (uvicorn, as
deployed; gunicorn's threaded worker), with a real client that goes away mid-wait."""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from django.conf import settings

from gateway import longpoll
from tests.conftest import World
from tests.gateway.test_longpoll import _pending_call
from tests.support.web import WebProcess, running_gunicorn, running_web
from tests.support.workers import wait_for
from tools_registry.models import Agent, Tool

# One place for the agent's waits: the one a hung-up long-poll holds, or frees.
SERVER_ENV = {"MAX_WAITS_PER_AGENT": "1"}


def _server(kind: str, tmp_path: Path) -> AbstractContextManager[WebProcess]:
    if kind == "uvicorn":
        return running_web(tmp_path=tmp_path, env={**SERVER_ENV, "WEB_THREADS": "4"})
    return running_gunicorn(tmp_path=tmp_path, threads=4, env=SERVER_ENV)


def _subscribers(call_id: str) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        channel = longpoll.channel(call_id)
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    finally:
        client.close()


def _get(web: WebProcess, token: str, path: str) -> httpx.Response:
    return httpx.get(f"{web.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _send_long_poll(web: WebProcess, token: str, call_id: str) -> socket.socket:
    """A client's connection with a long-poll sent on it, its answer not read."""
    address = urlsplit(web.url)
    client = socket.create_connection((address.hostname, address.port), timeout=10)
    client.sendall(
        f"GET /api/v1/tool-calls/{call_id}?wait=60 HTTP/1.1\r\n"
        f"Host: {address.netloc}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_a_long_poll_whose_client_hung_up_gives_its_place_back_at_once(
    live_world: World, django_db_blocker: Any, tmp_path: Path, kind: str
) -> None:
    """It held them to its deadline (a minute): an agent whose HTTP client timed out and
    asked again found its place taken, and a process's threads for waits filled with
    requests nobody would read the answer of."""
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    held, other = _pending_call(live_world, "s1"), _pending_call(live_world, "s2")
    with django_db_blocker.unblock(), _server(kind, tmp_path) as web:
        client = _send_long_poll(web, live_world.token, held)
        wait_for(lambda: _subscribers(held) == 1, timeout=20, message="the long-poll waits")
        refused = _get(web, live_world.token, f"/api/v1/tool-calls/{other}?wait=1")
        assert refused.status_code == 429, "the waiting long-poll holds the agent's one place"

        client.close()  # the client goes away, 60 s before the wait's deadline
        wait_for(
            lambda: _subscribers(held) == 0,
            timeout=10,
            interval=0.1,
            message="the hung-up long-poll stopped waiting",
        )
        again = _get(web, live_world.token, f"/api/v1/tool-calls/{other}?wait=1")
        assert (again.status_code, again.json()["status"]) == (200, "pending"), again.text
    assert "Traceback" not in web.log, web.log[-3000:]
