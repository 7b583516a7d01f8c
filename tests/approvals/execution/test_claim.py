"""An approved call whose tool or agent was switched off, or whose tool changed, since its
approval fails at the claim with that code: its handler never runs. Arguments that do not
fit the tool's schema never reach a handler either, even from the executor."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall
from audit.models import AuditEvent
from tests.approvals.test_walking_skeleton import REFUND, approve_through_the_web
from tests.conftest import World, sandbox_effects
from tests.support.calls import approved_call
from tests.support.workers import purge_queue, running_worker, wait_for
from tools_registry import registry
from tools_registry import services as registry_services
from tools_registry.models import Tool


def run_task(call: ToolCall) -> ToolCall:
    """The executor's Celery task, run in this process (the broker is not under test here)."""
    execute_call.apply(args=(str(call.pk),))
    call.refresh_from_db()
    return call


def actions(call: ToolCall) -> list[str]:
    return list(
        AuditEvent.objects.filter(call_id=call.pk).order_by("id").values_list("action", flat=True)
    )


def assert_refused(call: ToolCall, code: str) -> None:
    assert call.status == Status.FAILED
    assert call.error is not None and call.error["code"] == code
    assert call.attempts == 0 and call.fence == 0 and call.started_at is None
    assert call.finished_at is not None
    assert sandbox_effects() == [], "the handler ran"
    trail = actions(call)
    assert "call.execution_started" not in trail
    assert trail[-1] == "call.execution_refused"
    refused = AuditEvent.objects.get(call_id=call.pk, action="call.execution_refused")
    assert (refused.outcome, refused.data["code"]) == ("failed", code)


@contextmanager
def code_changed(name: str) -> Iterator[None]:
    """The tool's code is deployed with a new description: a new version once synced."""
    spec = registry.unregister(name)
    assert spec is not None
    registry.restore(dataclasses.replace(spec, description=spec.description + " Now faster."))
    try:
        yield
    finally:
        registry.restore(spec)


def test_a_call_whose_tool_was_disabled_after_approval_fails_unrun(world: World) -> None:
    call = approved_call(world)
    registry_services.update_policy(
        tool=call.tool, changes={"enabled": False}, changed_by=world.alice
    )
    assert_refused(run_task(call), "tool_disabled")


def test_a_call_whose_tool_code_is_gone_fails_unrun(world: World) -> None:
    call = approved_call(world)
    spec = registry.unregister("send_email")
    try:
        registry_services.sync_tools()
        assert_refused(run_task(call), "tool_disabled")
    finally:
        assert spec is not None
        registry.restore(spec)


def test_a_call_whose_agent_was_disabled_after_approval_fails_unrun(world: World) -> None:
    call = approved_call(world)
    registry_services.set_enabled(agent=world.agent, enabled=False, changed_by=world.alice)
    assert_refused(run_task(call), "agent_disabled")


def test_a_call_whose_tool_changed_after_approval_fails_unrun(world: World) -> None:
    call = approved_call(world)
    with code_changed("send_email"):
        assert registry_services.sync_tools().updated == ["send_email"]
        assert Tool.objects.get(name="send_email").version != call.tool_version
        assert_refused(run_task(call), "tool_version_changed")


def test_a_call_whose_tool_left_the_agents_allowlist_after_approval_fails_unrun(
    world: World,
) -> None:
    """Taking a tool off an agent's allowlist stops its approved calls too, as switching the
    tool off does; and a reviewer can no longer approve its waiting ones."""
    call = approved_call(world)
    world.agent.allowed_tools.remove(call.tool)
    assert_refused(run_task(call), "tool_not_allowed")
    body = world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert body["error"]["code"] == "tool_not_allowed"


def test_a_call_whose_user_may_no_longer_use_the_tool_fails_unrun(world: World) -> None:
    """The agent's role scopes narrowed after the approval (here: callers with no role may
    only read now): its approved write runs for nobody the agent may no longer serve."""
    from tools_registry.models import Agent

    call = approved_call(world)
    world.agent.unscoped_access = Agent.UnscopedAccess.READS
    registry_services.save_agent(agent=world.agent, changed_by=world.alice)
    assert_refused(run_task(call), "user_not_allowed")


def test_the_agent_reads_the_code_and_may_retry_once_the_tool_is_back(world: World) -> None:
    call = approved_call(world)
    tool = call.tool
    registry_services.update_policy(tool=tool, changes={"enabled": False}, changed_by=world.alice)
    run_task(call)
    body = world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "tool_disabled"

    registry_services.update_policy(tool=tool, changes={"enabled": True}, changed_by=world.alice)
    retried = world.api().client.post(
        f"/api/v1/tool-calls/{call.pk}/retry",
        HTTP_AUTHORIZATION=f"Bearer {world.token}",
    )
    assert retried.status_code in (200, 202), retried.content
    call = run_task(call)
    assert call.status == Status.SUCCEEDED
    assert [e["deliveries"] for e in sandbox_effects()] == [1]


def test_a_duplicate_delivery_of_a_refused_call_does_nothing(world: World) -> None:
    call = approved_call(world)
    registry_services.set_enabled(agent=world.agent, enabled=False, changed_by=world.alice)
    run_task(call)
    events_before = actions(call)
    call = run_task(call)
    assert actions(call) == events_before
    assert call.status == Status.FAILED


def test_arguments_that_do_not_fit_the_schema_never_reach_the_handler(world: World) -> None:
    call = approved_call(world)
    # Changed behind Countersign's back (intake validated them; the row did not keep them).
    bad: dict[str, Any] = {"to": "not an address", "subject": "", "body": "Hi."}
    ToolCall.objects.filter(pk=call.pk).update(arguments=bad)
    call = run_task(call)
    assert call.status == Status.FAILED
    assert call.error is not None and call.error["code"] == "invalid_arguments"
    assert sandbox_effects() == [], "the handler ran on invalid arguments"
    assert actions(call)[-2:] == ["call.execution_started", "call.execution_finished"]


def test_a_refusal_by_the_schema_quotes_no_field_an_admin_marked_sensitive(
    world: World,
) -> None:
    call = approved_call(world)
    # Sensitive by the tool's policy only (an admin's addition), not in the code.
    Tool.objects.filter(pk=call.tool_id).update(sensitive_fields=["to"])
    canary = "canary-7731-not-an-address"
    ToolCall.objects.filter(pk=call.pk).update(
        arguments={"to": canary, "subject": "Hi", "body": "Hi."}
    )
    call = run_task(call)
    assert call.error is not None and call.error["code"] == "invalid_arguments"
    assert canary not in json.dumps(call.error)
    trail = AuditEvent.objects.filter(call_id=call.pk).values_list("data", flat=True)
    assert canary not in json.dumps(list(trail))


@pytest.mark.worker
def test_a_real_worker_refuses_a_call_disabled_while_its_task_was_queued(
    live_world: World, tmp_path: Any
) -> None:
    purge_queue()
    call = ToolCall.objects.get(pk=live_world.api().submit(REFUND).json()["id"])
    approve_through_the_web(live_world, call)  # the task waits in Redis: no worker yet
    registry_services.update_policy(
        tool=live_world.tools["send_email"], changes={"enabled": False}, changed_by=live_world.alice
    )
    with running_worker(tmp_path=tmp_path):
        wait_for(
            lambda: ToolCall.objects.get(pk=call.pk).status == Status.FAILED,
            message="the worker to refuse the call",
        )
    call.refresh_from_db()
    assert_refused(call, "tool_disabled")
    status = live_world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert (status["status"], status["error"]["code"]) == ("failed", "tool_disabled")
