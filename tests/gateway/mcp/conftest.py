"""A real Countersign web process (uvicorn, the deployed ASGI app) and a Celery worker, shared
by the MCP tests of a module; each test brings its own agent, token and calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.web import WebProcess, running_web
from tests.support.workers import Worker, running_worker

# Short enough that the tests of the "still pending" answer stay quick; long enough for a
# decision made during the wait to be executed and answered within it.
CALL_WAIT_SECONDS = 6


@pytest.fixture(scope="module")
def mcp_web(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebProcess]:
    with (
        django_db_blocker.unblock(),
        running_web(
            tmp_path=tmp_path_factory.mktemp("mcp-web"),
            env={"MCP_CALL_WAIT_SECONDS": str(CALL_WAIT_SECONDS)},
        ) as web,
    ):
        yield web


@pytest.fixture(scope="module")
def mcp_worker(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    with (
        django_db_blocker.unblock(),
        running_worker(tmp_path=tmp_path_factory.mktemp("mcp-worker")) as worker,
    ):
        yield worker


@asynccontextmanager
async def connected(
    url: str, token: str, *, mode: str = "legacy", name: str = "countersign-tests"
) -> AsyncIterator[Client]:
    """The official MCP SDK client, over Streamable HTTP, with the agent's bearer token."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    transport = streamable_http_client(f"{url}/mcp", http_client=http)
    async with Client(
        transport, mode=mode, client_info=types.Implementation(name=name, version="9.8.7")
    ) as client:
        yield client
