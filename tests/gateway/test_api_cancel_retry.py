"""POST .../cancel (pending only) and POST .../retry (a failed write, with its original key;
never a destructive call)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from approvals.execution import runner, send
from approvals.models import Status, ToolCall
from approvals.services.decisions import confirmation_phrase, decide
from audit.models import AuditEvent
from gateway import breaker
from sandbox.models import Customer
from tests.conftest import ApiClient, World, sandbox_effects
from tests.gateway.conftest import SEND_EMAIL, in_threads
from tools_registry import services as registry_services
from tools_registry.models import Agent, Tool

UPDATE_MISSING = {
    "tool": "update_customer",
    "arguments": {"customer_id": "cus_0099", "changes": {"plan": "pro"}},
    "session_id": "run-1",
}


def _post(world: World, call_id: str, verb: str) -> Any:
    return world.api().client.post(
        f"/api/v1/tool-calls/{call_id}/{verb}", HTTP_AUTHORIZATION=f"Bearer {world.token}"
    )


def _approved_and_run(world: World, body: dict, *reviewers: User) -> ToolCall:
    call_id = world.api().submit(body).json()["id"]
    for reviewer in reviewers or (world.bob,):
        # A destructive approval is typed out by a reviewer who signed in just now.
        decide(
            call_id=call_id,
            reviewer=reviewer,
            verdict="approve",
            comment="ok",
            confirmation=confirmation_phrase(ToolCall.objects.get(pk=call_id)),
            authenticated_at=timezone.now(),
        )
    runner.execute(call_id)  # what the worker does with the task sent on commit
    return ToolCall.objects.get(pk=call_id)


def test_a_pending_call_is_cancelled_and_cancelling_again_is_harmless(world: World) -> None:
    call_id = world.api().submit(SEND_EMAIL).json()["id"]
    first = _post(world, call_id, "cancel")
    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    again = _post(world, call_id, "cancel")
    assert again.status_code == 200
    assert AuditEvent.objects.filter(action="call.cancelled", call_id=call_id).count() == 1


def test_a_decided_call_cannot_be_cancelled(world: World) -> None:
    call_id = world.api().submit(SEND_EMAIL).json()["id"]
    decide(call_id=call_id, reviewer=world.bob, verdict="approve", comment="")
    response = _post(world, call_id, "cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"
    assert ToolCall.objects.get(pk=call_id).status == Status.APPROVED


def test_a_failed_write_is_retried_with_its_original_key(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    call = _approved_and_run(world, UPDATE_MISSING)
    assert call.status == Status.FAILED
    assert call.error["code"] == "customer_not_found"

    Customer.objects.create(customer_id="cus_0099", name="Late Arrival", email="l@example.com")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post(world, str(call.pk), "retry")
    assert response.status_code == 202
    assert response.json()["status"] == "approved"
    assert response["Location"].endswith(f"/api/v1/tool-calls/{call.pk}")
    assert send.send_execution in [getattr(c, "func", c) for c in callbacks]
    # Repeating the request changes nothing.
    assert _post(world, str(call.pk), "retry").status_code == 202
    assert AuditEvent.objects.filter(action="call.retry_requested").count() == 1

    runner.execute(call.pk)
    call.refresh_from_db()
    assert call.status == Status.SUCCEEDED
    assert call.attempts == 2
    [effect] = sandbox_effects()
    assert effect["idempotency_key"] == f"countersign-{call.pk}"


def test_a_failing_write_is_retried_on_its_approval_only_so_many_times(
    world: World, settings: Any
) -> None:
    """Each retry runs on the reviewers' one approval, and nobody sees it again: an agent
    looping on a write that keeps failing ran it for ever. Past ``EXECUTOR_AGENT_RETRIES``
    the retry is refused, and a new call needs its own approval."""
    settings.EXECUTOR_AGENT_RETRIES = 2
    call = _approved_and_run(world, UPDATE_MISSING)
    for _ in range(2):
        assert _post(world, str(call.pk), "retry").status_code == 202
        runner.execute(call.pk)
        call.refresh_from_db()
        assert (call.status, call.error["code"]) == (Status.FAILED, "customer_not_found")

    refused = _post(world, str(call.pk), "retry")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "retry_not_allowed"
    assert "retried 2 times" in error["message"] and "new call" in error["message"]
    call.refresh_from_db()
    assert (call.status, call.attempts) == (Status.FAILED, 3)
    assert AuditEvent.objects.filter(action="call.retry_requested", call_id=call.pk).count() == 2


def test_a_destructive_call_is_never_retried_on_request(world: World) -> None:
    dana = User.objects.create_user("dana", "dana@example.com", "pw-dana")
    registry_services.grant_review(tool=world.tools["delete_customer"], user=dana)
    body = {
        "tool": "delete_customer",
        "arguments": {"customer_id": "cus_0099", "reason": "asked to be forgotten"},
        "session_id": "run-1",
    }
    call = _approved_and_run(world, body, world.bob, dana)
    assert call.status == Status.FAILED
    assert call.needs_attention is True
    response = _post(world, str(call.pk), "retry")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "retry_not_allowed"
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED


def test_reads_and_undecided_calls_are_not_retried(world: World) -> None:
    read = world.api().submit(
        {"tool": "get_customer", "arguments": {"customer_id": "cus_0099"}, "session_id": "s"}
    )
    assert read.status_code == 422
    response = _post(world, read.json()["call"]["id"], "retry")
    assert response.json()["error"]["code"] == "retry_not_allowed"
    pending = world.api().submit(SEND_EMAIL).json()["id"]
    response = _post(world, pending, "retry")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"


def test_a_retry_waits_while_the_circuit_is_open(world: World) -> None:
    call = _approved_and_run(world, UPDATE_MISSING)
    Tool.objects.filter(name="update_customer").update(breaker_threshold=1)
    breaker.record_outcome(tool_name="update_customer", status="unknown", error=None)
    response = _post(world, str(call.pk), "retry")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "circuit_open"
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED


def test_a_call_that_may_not_be_retried_says_so_while_the_circuit_is_open(world: World) -> None:
    """The breaker is asked last: a pending write is told it is pending, not to wait out a
    cool-down and then learn that."""
    pending = world.api().submit(UPDATE_MISSING).json()["id"]
    Tool.objects.filter(name="update_customer").update(
        breaker_threshold=1, breaker_cooldown_seconds=600
    )
    breaker.record_outcome(tool_name="update_customer", status="unknown", error=None)
    response = _post(world, pending, "retry")
    assert response.status_code == 409, response.json()
    assert response.json()["error"]["code"] == "invalid_state"
    assert "Retry-After" not in response
    assert _post(world, str(uuid.uuid4()), "retry").status_code == 404


def test_a_retry_repeated_while_the_call_runs_again_takes_no_probe_slot(world: World) -> None:
    """In the half-open state one call may probe the tool; a retry of a call that is already
    approved again changes nothing, so it must not hold that slot."""
    call = _approved_and_run(world, UPDATE_MISSING)
    assert _post(world, str(call.pk), "retry").status_code == 202  # approved again
    Tool.objects.filter(name="update_customer").update(
        breaker_threshold=1, breaker_cooldown_seconds=1
    )
    breaker.record_outcome(tool_name="update_customer", status="unknown", error=None)
    time.sleep(1.1)  # the cool-down is over: half-open, one probe may go
    again = _post(world, str(call.pk), "retry")
    assert again.status_code == 202 and again.json()["status"] == "approved"
    tool = Tool.objects.get(name="update_customer")
    assert breaker.admit(tool).probe_token, "the probe slot is still free"


def test_a_retry_takes_from_the_tools_rate_limit_as_a_new_call_does(world: World) -> None:
    """A re-run runs the tool again: retried in a loop, a failing write reached the
    downstream as often as the agent asked, whatever the tool's rate limit said."""
    Tool.objects.filter(name="update_customer").update(rate_limit_per_agent="2/minute")
    call = _approved_and_run(world, UPDATE_MISSING)  # the first of the two
    assert _post(world, str(call.pk), "retry").status_code == 202  # the second
    runner.execute(call.pk)
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED  # still no such customer

    # Half-open, so that the refused retry would have held the one probe slot.
    Tool.objects.filter(name="update_customer").update(
        breaker_threshold=1, breaker_cooldown_seconds=1
    )
    breaker.record_outcome(tool_name="update_customer", status="unknown", error=None)
    time.sleep(1.1)
    refused = _post(world, str(call.pk), "retry")
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 60
    call.refresh_from_db()
    assert (call.status, call.attempts) == (Status.FAILED, 2)
    assert AuditEvent.objects.filter(action="call.retry_requested").count() == 1
    tool = Tool.objects.get(name="update_customer")
    assert breaker.admit(tool).probe_token, "the refused retry gave the probe slot back"


def test_concurrent_retries_of_one_call_take_one_place_in_its_window(live_world: World) -> None:
    """Ten retries of one failed call at once: one re-runs it and takes from the window, the
    others find it approved again and take nothing (the call's row lock orders them)."""
    Tool.objects.filter(name="update_customer").update(rate_limit_per_agent="3/minute")
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=100)
    call = _approved_and_run(live_world, UPDATE_MISSING)  # the first of the three
    codes = in_threads(10, lambda _: _post(live_world, str(call.pk), "retry").status_code)
    assert codes == [202] * 10
    assert AuditEvent.objects.filter(action="call.retry_requested").count() == 1
    # The retry took the second place: one new call fits, the next does not.
    assert live_world.api().submit(UPDATE_MISSING).status_code == 202
    assert live_world.api().submit(UPDATE_MISSING).status_code == 429


def test_another_agents_call_is_not_found(world: World) -> None:
    call_id = world.api().submit(SEND_EMAIL).json()["id"]
    other = Agent.objects.create(name="other-bot", owner=world.alice)
    _, token = registry_services.issue_token(agent=other)
    stranger = ApiClient(token)
    for verb in ("cancel", "retry"):
        response = stranger.client.post(
            f"/api/v1/tool-calls/{call_id}/{verb}", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "call_not_found"
    assert ToolCall.objects.get(pk=call_id).status == Status.PENDING


@pytest.mark.parametrize("switched_off", ["tool", "allowlist"])
def test_a_retry_is_refused_once_the_tool_is_off_or_off_the_allowlist(
    world: World, switched_off: str, django_capture_on_commit_callbacks: Any
) -> None:
    call = _approved_and_run(world, UPDATE_MISSING)
    assert call.status == Status.FAILED
    tool = world.tools["update_customer"]
    if switched_off == "tool":
        registry_services.update_policy(tool=tool, changes={"enabled": False}, changed_by=None)
    else:
        world.agent.allowed_tools.remove(tool)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post(world, str(call.pk), "retry")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "retry_not_allowed"
    assert send.send_execution not in [getattr(c, "func", c) for c in callbacks]
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED


def test_a_retry_is_refused_once_the_end_users_roles_no_longer_reach_the_tool(
    world: World,
) -> None:
    """A new call for the same person would be refused (tool_not_allowed_for_user): so is a
    re-run of the old one."""
    Agent.objects.filter(pk=world.agent.pk).update(
        user_roles_from="asserted",
        assertable_roles=["support"],
        role_scopes={"support": {"risks": ["read", "write"]}},
        unscoped_access="none",
    )
    world.agent.refresh_from_db()
    body = {**UPDATE_MISSING, "on_behalf_of": {"id": "ada", "roles": ["support"]}}
    call = _approved_and_run(world, body)
    assert call.status == Status.FAILED
    assert _post(world, str(call.pk), "retry").status_code == 202  # still allowed
    runner.execute(call.pk)
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED
    Agent.objects.filter(pk=world.agent.pk).update(role_scopes={"support": {"risks": ["read"]}})
    new_one = world.api().submit({**body, "session_id": "s2"})
    assert new_one.json()["error"]["code"] == "tool_not_allowed_for_user"
    response = _post(world, str(call.pk), "retry")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "retry_not_allowed"
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED


@pytest.mark.parametrize(
    "change",
    [
        {"rules": [{"when": 'args.customer_id == "cus_0099"', "then": "refuse"}]},
        {"approvals_required": 2},
    ],
    ids=["now-refused", "needs-more-approvals"],
)
def test_a_retry_is_refused_once_the_tools_policy_changed(
    world: World, change: dict, django_capture_on_commit_callbacks: Any
) -> None:
    """Each retry runs on the approval given under the policy of its time: a rule added since
    that refuses such calls, or a second approval now asked, never applied to the re-run. The
    agent is told to make a new call, screened and approved under the current policy."""
    call = _approved_and_run(world, UPDATE_MISSING)
    assert call.status == Status.FAILED
    registry_services.update_policy(
        tool=world.tools["update_customer"], changes=change, changed_by=world.alice
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post(world, str(call.pk), "retry")
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "retry_not_allowed"
    assert "policy changed" in error["message"] and "new call" in error["suggestion"]
    assert send.send_execution not in [getattr(c, "func", c) for c in callbacks]
    call.refresh_from_db()
    assert (call.status, call.attempts) == (Status.FAILED, 1)
    assert not AuditEvent.objects.filter(action="call.retry_requested").exists()
    [refused] = AuditEvent.objects.filter(action="call.retry_refused", call_id=call.pk)
    assert refused.outcome == "retry_not_allowed"
    assert refused.data["message"] == error["message"]


def test_a_retry_under_an_unchanged_policy_still_runs(world: World) -> None:
    """Only a change of the tool's policy refuses it: another tool's change does not."""
    call = _approved_and_run(world, UPDATE_MISSING)
    registry_services.update_policy(
        tool=world.tools["send_email"], changes={"approvals_required": 2}, changed_by=world.alice
    )
    assert _post(world, str(call.pk), "retry").status_code == 202


def test_every_refused_retry_is_audited_on_the_call(world: World, settings: Any) -> None:
    """As a refused submission is (``call.refused``): a retry refused for its retries spent,
    or for the tool's breaker, leaves its trace on the call, with the code the agent got."""
    settings.EXECUTOR_AGENT_RETRIES = 0
    call = _approved_and_run(world, UPDATE_MISSING)
    assert _post(world, str(call.pk), "retry").status_code == 409
    settings.EXECUTOR_AGENT_RETRIES = 3
    Tool.objects.filter(name="update_customer").update(
        breaker_threshold=1, breaker_cooldown_seconds=600
    )
    breaker.record_outcome(tool_name="update_customer", status="unknown", error=None)
    assert _post(world, str(call.pk), "retry").status_code == 503
    refusals = AuditEvent.objects.filter(action="call.retry_refused", call_id=call.pk)
    assert {(e.actor_type, e.agent_name) for e in refusals} == {("agent", world.agent.name)}
    assert sorted(refusals.values_list("outcome", flat=True)) == [
        "circuit_open",
        "retry_not_allowed",
    ]
    circuit = refusals.get(outcome="circuit_open")
    assert int(circuit.data["retry_after"]) >= 1
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED


def test_a_tool_switched_off_and_on_keeps_a_retry_but_not_a_change_beside_it(
    world: World,
) -> None:
    """Switching the tool off and on again changes nothing the call was approved for (the
    claim refuses it while the tool is off); a change of its rules meanwhile does."""
    call = _approved_and_run(world, UPDATE_MISSING)
    tool = world.tools["update_customer"]
    for enabled in (False, True):
        registry_services.update_policy(
            tool=tool, changes={"enabled": enabled}, changed_by=world.alice
        )
    assert _post(world, str(call.pk), "retry").status_code == 202
    runner.execute(call.pk)
    assert ToolCall.objects.get(pk=call.pk).status == Status.FAILED
    registry_services.update_policy(tool=tool, changes={"enabled": False}, changed_by=world.alice)
    registry_services.update_policy(
        tool=tool, changes={"enabled": True, "approvals_required": 2}, changed_by=world.alice
    )
    refused = _post(world, str(call.pk), "retry")
    assert refused.status_code == 409
    assert "policy changed" in refused.json()["error"]["message"]
