"""PostgreSQL going away under a running web process, and coming back: each door answers
503 ``unavailable`` while it is away, and nothing fails once it is back (no pooled
connection it cut is handed out again)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.db import connection

from approvals.models import ToolCall
from audit.models import AuditEvent
from tests.conftest import World
from tests.gateway.conftest import GET_CUSTOMER
from tests.gateway.mcp.test_endpoint import INITIALIZE, post
from tests.support.link import TcpLink
from tests.support.web import WebProcess, running_web
from tests.support.workers import worker_database_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def web_behind_a_database_link(
    django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WebProcess, TcpLink]]:
    """A web process whose every PostgreSQL connection goes through a link the test cuts."""
    db = connection.settings_dict
    port = int(db["PORT"] or 5432)
    link = TcpLink((db["HOST"] or "127.0.0.1", port))
    url = worker_database_url().replace(f":{port}/", f":{link.port}/")
    try:
        with (
            django_db_blocker.unblock(),
            running_web(
                tmp_path=tmp_path_factory.mktemp("db-link"),
                env={"DATABASE_URL": url, "DB_POOL_TIMEOUT": "2"},
            ) as web,
        ):
            yield web, link
    finally:
        link.close()


def _tools(web: WebProcess, world: World) -> httpx.Response:
    return httpx.get(
        f"{web.url}/api/v1/tools", headers={"Authorization": f"Bearer {world.token}"}, timeout=30
    )


def _submit(web: WebProcess, world: World, key: str) -> httpx.Response:
    return httpx.post(
        f"{web.url}/api/v1/tool-calls",
        json=GET_CUSTOMER,
        headers={"Authorization": f"Bearer {world.token}", "Idempotency-Key": key},
        timeout=30,
    )


def test_after_a_database_restart_no_request_fails_on_a_connection_it_cut(
    live_world: World, web_behind_a_database_link: tuple[WebProcess, TcpLink]
) -> None:
    """The pool lent the connections a restart had cut, one per request: each failed
    (500 internal_error) until the pool had been emptied of them."""
    web, link = web_behind_a_database_link
    with ThreadPoolExecutor(6) as threads:
        keys = [str(uuid.uuid4()) for _ in range(6)]
        answers = threads.map(lambda key: _submit(web, live_world, key), keys)
        assert [answer.status_code for answer in answers] == [200] * 6  # six pooled
    link.cut()
    link.restore()  # PostgreSQL restarted while no request came
    statuses = [_tools(web, live_world).status_code for _ in range(6)]
    assert statuses == [200] * 6
    assert httpx.get(f"{web.url}/healthz", timeout=30).json()["database"] == "ok"


def test_while_the_database_is_down_each_door_answers_503_unavailable(
    live_world: World, web_behind_a_database_link: tuple[WebProcess, TcpLink]
) -> None:
    """They answered 500 internal_error (the agent is told it met a bug), and /mcp a bare
    text 500. Once it is back, the retry with the same key is answered at once, and
    creates the call once."""
    web, link = web_behind_a_database_link
    key = str(uuid.uuid4())
    link.cut()
    for answer in (_tools(web, live_world), _submit(web, live_world, key)):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "unavailable"
        assert answer.json()["error"]["retryable"] is True
        assert answer.headers["Retry-After"] == "5"
    mcp = post(web, live_world.token, INITIALIZE)
    assert mcp.status_code == 503, mcp.text
    assert mcp.headers["Retry-After"] == "5"
    assert mcp.json()["error"]["data"]["error"]["code"] == "unavailable"
    health = httpx.get(f"{web.url}/healthz", timeout=30)
    assert health.status_code == 503
    assert health.json()["database"].startswith("down")
    assert not ToolCall.objects.filter(request_key=key).exists()

    link.restore()
    # At once: the pool's tries to connect while it was away did not leave it waiting
    # to try again (seconds, and a minute after a long outage).
    retried = _submit(web, live_world, key)
    assert retried.status_code == 200, retried.text
    call = ToolCall.objects.get(request_key=key)
    assert retried.json()["id"] == str(call.pk) and call.status == "succeeded"
    assert AuditEvent.objects.filter(call_id=call.pk, action="call.submitted").count() == 1
