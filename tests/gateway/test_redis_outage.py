"""Redis down (the breakers' and rate limits' state): a submission is refused with 503
``unavailable``, leaves nothing behind, and goes through with the same key once it is back."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import override_settings

from approvals.models import ToolCall
from audit.models import AuditEvent
from tests.conftest import World
from tests.gateway.conftest import GET_CUSTOMER, SEND_EMAIL
from tests.support.link import TcpLink

pytestmark = pytest.mark.django_db(transaction=True)

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens there


@pytest.mark.parametrize("body", [SEND_EMAIL, GET_CUSTOMER], ids=["write", "read"])
def test_a_submission_while_redis_is_down_is_503_and_leaves_nothing(
    live_world: World, body: dict[str, object]
) -> None:
    api, key = live_world.api(), str(uuid.uuid4())
    with override_settings(REDIS_URL=NOWHERE):
        refused = api.submit(body, key=key)
        assert refused.status_code == 503, refused.content
        assert refused.json()["error"]["code"] == "unavailable"
        assert refused["Retry-After"] == "5"
        assert api.get("/api/v1/tools").status_code == 200  # what needs no Redis still works
    assert not ToolCall.objects.filter(request_key=key).exists()
    answered = api.submit(body, key=key)  # back: the key was not left taken
    assert answered.status_code in (200, 202), answered.content
    call = ToolCall.objects.get(request_key=key)
    assert AuditEvent.objects.filter(call_id=call.pk, action="call.submitted").count() == 1


def test_after_a_redis_restart_the_next_submission_goes_through(live_world: World) -> None:
    """The process keeps one Redis client (``coordination``), with its pooled connections:
    the ones a restart cut are replaced, not reused until the process restarts."""
    target = urlsplit(settings.REDIS_URL)
    link = TcpLink((target.hostname or "127.0.0.1", target.port or 6379))
    api = live_world.api()
    try:
        with override_settings(REDIS_URL=f"redis://127.0.0.1:{link.port}{target.path}"):
            assert api.submit(SEND_EMAIL).status_code == 202
            link.cut()
            assert api.submit(SEND_EMAIL).status_code == 503
            link.restore()
            answered = api.submit(SEND_EMAIL)
            assert answered.status_code == 202, answered.content
    finally:
        link.close()
