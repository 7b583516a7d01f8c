"""A tool declared in code with a new risk class, its name, description and schema unchanged
(so its version, their hash, unchanged too): the calls made while it was a write were
screened as writes (one approval, no typed confirmation, no recent sign-in, the agent's
retry allowed). Raised to destructive, they are not what the tool now is: a waiting one can
no longer be approved, an approved one fails unrun at its claim, a failed one is not re-run
on the agent's request. An upstream's tool binds its risk into its version for the same
reason (``services.upstreams``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall
from tests.approvals.conftest import login
from tests.conftest import World, sandbox_effects
from tests.support.calls import approved_call, pending_call
from tools_registry import registry
from tools_registry import services as registry_services
from tools_registry.models import Tool
from tools_registry.policy import Risk


@contextmanager
def made_destructive(name: str) -> Iterator[None]:
    """The tool's code deployed as destructive, nothing else changed, and synced."""
    spec = registry.unregister(name)
    assert spec is not None
    registry.restore(dataclasses.replace(spec, risk=Risk.DESTRUCTIVE, overwrites=True))
    try:
        report = registry_services.sync_tools()
        assert report.updated == [name] and not report.switched_off
        tool = Tool.objects.get(name=name)
        assert (tool.risk, tool.version, tool.enabled) == (Risk.DESTRUCTIVE, spec.version, True)
        yield
    finally:
        registry.restore(spec)


def run_task(call: ToolCall) -> ToolCall:
    execute_call.apply(args=(str(call.pk),))
    call.refresh_from_db()
    return call


def test_a_waiting_write_of_a_tool_made_destructive_cannot_be_approved(world: World) -> None:
    """It needed one approval as a write; one click approved (and ran) a destructive call
    with neither the second reviewer, the typed target nor the recent sign-in."""
    call = pending_call(world)
    assert call.approvals_required == 1
    with made_destructive("send_email"):
        bob = login(world.bob)
        answer = bob.post(
            f"/approvals/{call.pk}/decide/",
            {"verdict": "approve", "arguments_hash": call.arguments_hash},
            HTTP_HX_REQUEST="true",
        )
        assert "The tool&#x27;s definition changed" in answer.content.decode()
        call.refresh_from_db()
        assert call.status == Status.PENDING
        assert call.decisions.count() == 0
        # Stopping it stays easy.
        rejected = bob.post(
            f"/approvals/{call.pk}/decide/",
            {"verdict": "reject", "comment": "Now destructive.", "arguments_hash": "x" * 64},
            HTTP_HX_REQUEST="true",
        )
        assert rejected.status_code == 200
        call.refresh_from_db()
        assert call.status == Status.REJECTED


def test_an_approved_write_of_a_tool_made_destructive_fails_unrun(world: World) -> None:
    call = approved_call(world)
    with made_destructive("send_email"):
        call = run_task(call)
    assert call.status == Status.FAILED
    assert call.error is not None and call.error["code"] == "tool_version_changed"
    assert call.attempts == 0
    assert sandbox_effects() == [], "the handler ran"


def test_the_agent_cannot_retry_a_failed_write_of_a_tool_made_destructive(world: World) -> None:
    """A destructive call is never re-run on an agent's request; one made as a write is
    not what the tool does now either."""
    call = approved_call(world)
    tool = call.tool
    registry_services.update_policy(tool=tool, changes={"enabled": False}, changed_by=world.alice)
    assert run_task(call).status == Status.FAILED
    registry_services.update_policy(tool=tool, changes={"enabled": True}, changed_by=world.alice)
    with made_destructive("send_email"):
        retried = world.api().client.post(
            f"/api/v1/tool-calls/{call.pk}/retry", HTTP_AUTHORIZATION=f"Bearer {world.token}"
        )
        assert retried.status_code == 409, retried.content
        assert retried.json()["error"]["code"] == "retry_not_allowed"
        call = run_task(call)
    assert call.status == Status.FAILED
    assert sandbox_effects() == [], "the handler ran"
