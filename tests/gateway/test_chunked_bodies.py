"""A chunked request body, through a real server: refused for what it is. Committed (kept apart
from test_errors.py, whose tests share one world and roll back)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from approvals.models import ToolCall
from tests.conftest import World
from tests.gateway.conftest import SEND_EMAIL
from tests.support.web import running_web


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_refused_for_what_it_is(live_world: World, tmp_path: Path) -> None:
    """Through the server as deployed: a body streamed without a Content-Length is not
    read, and the agent is told so, not that its valid JSON is not JSON."""
    body = json.dumps(SEND_EMAIL).encode()
    headers = {
        "Authorization": f"Bearer {live_world.token}",
        "Idempotency-Key": "chunked",
        "Content-Type": "application/json",
    }
    with running_web(tmp_path=tmp_path) as web:
        response = httpx.post(
            f"{web.url}/api/v1/tool-calls", content=iter([body[:10], body[10:]]), headers=headers
        )
        assert response.request.headers["Transfer-Encoding"] == "chunked"
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert "Content-Length" in error["message"], error
        assert not ToolCall.objects.exists()
        # The same body with its length is read.
        sent = httpx.post(f"{web.url}/api/v1/tool-calls", content=body, headers=headers)
        assert sent.status_code == 202, sent.text
