"""Any session id the API accepts is stored, whatever its masked form grows to."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from tests.conftest import World

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("tool", ["send_email", "get_customer"])
def test_a_session_id_full_of_addresses_is_accepted_and_masked(world: World, tool: str) -> None:
    session_id = "a@b.io" * 21  # 126 characters, each address masked to ~23
    arguments = (
        {"to": "ada@example.com", "subject": "Hi", "body": "Hello."}
        if tool == "send_email"
        else {"customer_id": "cus_0001"}
    )
    response = world.api().submit({"tool": tool, "arguments": arguments, "session_id": session_id})
    assert response.status_code in {200, 202}, response.content
    stored = AuditEvent.objects.filter(action="call.submitted").latest("id").session_id
    assert "a@b.io" not in stored
    assert len(stored) > 128
