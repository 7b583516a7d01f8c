"""Real upstreams for the upstream tests, each served as its own process: an HTTP API with
an OpenAPI document (``http_api``) and an MCP server (``mcp_server``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.web import WebProcess, running_asgi

UPSTREAM_TOKEN = "upstream-canary-7f3a9c-not-for-logs"


@contextmanager
def running_upstream(module: str, tmp_path: Path) -> Iterator[WebProcess]:
    env = {**os.environ, "UPSTREAM_TOKEN": UPSTREAM_TOKEN, "PYTHONUNBUFFERED": "1"}
    with running_asgi(
        f"tests.support.upstreams.{module}:app", tmp_path=tmp_path, env=env, ready="/_effects"
    ) as web:
        yield web


def control(web: WebProcess, **state: Any) -> None:
    httpx.post(f"{web.url}/_control", json=state, timeout=5).raise_for_status()


def effects(web: WebProcess) -> dict[str, Any]:
    return httpx.get(f"{web.url}/_effects", timeout=5).json()  # type: ignore[no-any-return]
