"""Any session id the API accepts is stored, whatever its masked form grows to."""

from __future__ import annotations

import pytest

from approvals.models import ToolCall
from audit.models import AuditEvent
from tests.conftest import World
from tests.gateway.test_errors import error_of

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]


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


@pytest.mark.parametrize(
    "session_id",
    ["\t", "run\n1", "run-\u202e1", "run\u200b-1", "\u2066run-1\u2069", "run\x85"],
)
def test_a_session_id_with_characters_a_reviewer_cannot_see_is_refused(
    world: World, session_id: str
) -> None:
    """The queue and the call's page show the session; a tab is no session a person can
    name, and a right-to-left override or a zero-width space makes one read as another."""
    body = {"tool": "get_customer", "arguments": {"customer_id": "cus_0001"}}
    error = error_of(world.api().submit({**body, "session_id": session_id}), 400, "invalid_request")
    assert [d["path"] for d in error["details"]] == ["$.session_id"]
    assert not ToolCall.objects.exists()
    assert not AuditEvent.objects.filter(action="call.submitted").exists()


def test_a_session_id_with_a_unicode_tag_is_refused(world: World) -> None:
    """Beyond what the schema's pattern can say: tag characters smuggle invisible ASCII."""
    body = {"tool": "get_customer", "arguments": {"customer_id": "cus_0001"}}
    error = error_of(
        world.api().submit({**body, "session_id": "run\U000e0041"}), 400, "invalid_request"
    )
    assert [d["path"] for d in error["details"]] == ["$.session_id"]
    assert not ToolCall.objects.exists()
