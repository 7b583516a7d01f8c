"""tasks/list walks the agent's open calls a page at a time, oldest first, with a cursor
that only this server's pages give."""

from __future__ import annotations

import pytest
from mcp.shared.exceptions import MCPError

from approvals.models import Status, ToolCall
from gateway.mcp import tasks
from gateway.mcp.calls import Caller
from tests.conftest import World
from tests.support.calls import pending_call


def test_the_pages_cover_every_open_call_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "PAGE_SIZE", 2)
    calls = [pending_call(world) for _ in range(5)]
    ToolCall.objects.filter(pk=calls[2].pk).update(status=Status.REJECTED)  # set-up: ended
    caller = Caller(agent=world.agent, session_id="", client="", token_id=0)
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = tasks._open_calls(caller, cursor)
        seen += [c.id for c in page]
        pages += 1
        if cursor is None:
            break
    assert seen == [c.pk for c in calls if c.pk != calls[2].pk]
    assert pages == 2


def test_a_cursor_this_server_did_not_give_is_invalid_params(world: World) -> None:
    caller = Caller(agent=world.agent, session_id="", client="", token_id=0)
    with pytest.raises(MCPError) as refused:
        tasks._open_calls(caller, "not-a-cursor")
    assert refused.value.error.code == -32602
