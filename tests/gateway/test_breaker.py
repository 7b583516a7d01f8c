"""The circuit breaker per tool: opens after N consecutive failures, refuses, lets exactly
one probe through after the cool-down, and closes (or opens again) on the probe's outcome."""

from __future__ import annotations

import threading
import time
from collections import Counter
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from approvals import sweeps
from approvals.execution import runner, send
from approvals.execution.claim import claim_call
from approvals.execution.finish import Outcome
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from audit.models import AuditEvent
from gateway import breaker
from tests.conftest import World, executions_sent
from tests.gateway.conftest import SEND_EMAIL, in_threads
from tests.support.calls import age_lease, approved_call, claimed_call, received_read
from tests.support.probe import Probe, install_probe_tool, stock_call
from tests.support.web import free_port
from tools_registry import services as registry_services
from tools_registry.models import Agent, Tool, Upstream
from tools_registry.policy import Risk
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams import openapi


def _status(world: World, body: dict | None = None) -> int:
    return world.api().submit(body or stock_call()).status_code


def _race_the_probe(world: World, probe: Probe, *, callers: int) -> Counter[int]:
    """Submit from ``callers`` threads at once; the probe (if any gets through) is released
    once all the others have been refused."""
    answered: Counter[int] = Counter()
    lock = threading.Lock()

    def submit(_: int) -> int:
        status = world.api().submit(stock_call()).status_code
        with lock:
            answered[status] += 1
            if answered[503] == callers - 1 and probe.hold is not None:
                probe.hold.set()
        return status

    return Counter(in_threads(callers, submit))


@pytest.mark.django_db(transaction=True)
def test_it_opens_refuses_half_opens_with_one_probe_and_closes(
    live_world: World, probe_tool_cleanup: None
) -> None:
    probe = install_probe_tool(live_world, breaker_threshold=3, breaker_cooldown_seconds=1)
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=1000)
    for cycle in range(2):
        probe.mode, probe.delay = "fail", 0.0
        calls_before = probe.calls
        assert [_status(live_world) for _ in range(3)] == [502, 502, 502]

        # Open: refused at once, the tool is not called.
        refused = live_world.api().submit(stock_call())
        assert refused.status_code == 503
        assert refused["Retry-After"] == "1"
        assert probe.calls == calls_before + 3

        # Half-open: of 20 simultaneous calls exactly one reaches the tool. The probe stays
        # busy until the other 19 are answered, however slowly the threads start.
        time.sleep(1.1)
        probe.mode, probe.hold = "ok", threading.Event()
        codes = _race_the_probe(live_world, probe, callers=20)
        assert codes == {200: 1, 503: 19}, (cycle, codes)
        assert probe.calls == calls_before + 4

        # The probe succeeded: closed again.
        probe.hold = None
        assert [_status(live_world) for _ in range(4)] == [200] * 4
    opened = AuditEvent.objects.filter(action="tool.breaker_opened", tool_name="check_stock")
    closed = AuditEvent.objects.filter(action="tool.breaker_closed", tool_name="check_stock")
    assert (opened.count(), closed.count()) == (2, 2)
    assert AuditEvent.objects.filter(action="call.refused", outcome="circuit_open").count() == 40


def test_a_failed_probe_opens_it_again(world: World, probe_tool_cleanup: None) -> None:
    probe = install_probe_tool(world, breaker_threshold=2, breaker_cooldown_seconds=1)
    probe.mode = "timeout"
    assert [_status(world) for _ in range(3)] == [504, 504, 503]
    time.sleep(1.1)
    assert _status(world) == 504, "the probe runs"
    refused = world.api().submit(stock_call())
    assert refused.status_code == 503
    assert refused["Retry-After"] == "1"
    assert probe.calls == 3


def test_a_tool_that_answers_no_is_healthy(world: World, probe_tool_cleanup: None) -> None:
    probe = install_probe_tool(world, breaker_threshold=2, breaker_cooldown_seconds=60)
    probe.mode = "refuse"
    assert [_status(world) for _ in range(5)] == [422] * 5, "a refusal is an answer"
    assert probe.calls == 5


def test_a_success_resets_the_count(world: World, probe_tool_cleanup: None) -> None:
    probe = install_probe_tool(world, breaker_threshold=2, breaker_cooldown_seconds=60)
    statuses = []
    for mode in ("fail", "ok", "fail", "ok", "fail", "fail", "ok"):
        probe.mode = mode
        statuses.append(_status(world))
    assert statuses == [502, 200, 502, 200, 502, 502, 503]


def test_a_probe_refused_for_another_reason_frees_the_slot(
    world: World, probe_tool_cleanup: None
) -> None:
    probe = install_probe_tool(
        world, breaker_threshold=1, breaker_cooldown_seconds=1, rate_limit_per_user="1/minute"
    )
    probe.mode = "fail"
    assert _status(world, stock_call(on_behalf_of="ada")) == 502
    time.sleep(1.1)
    probe.mode = "ok"
    # Ada's window is full: her call takes the probe slot, is refused, and gives it back.
    assert _status(world, stock_call(on_behalf_of="ada")) == 429
    assert _status(world, stock_call(on_behalf_of="grace")) == 200
    assert _status(world, stock_call(on_behalf_of="linus")) == 200


def test_a_probe_whose_request_failed_before_its_read_ran_frees_the_slot(
    world: World, probe_tool_cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's request failed between committing its read and running it: that probe
    will never report, so the next call is the probe, not refused for the probe's lease."""
    probe = install_probe_tool(world, breaker_threshold=1, breaker_cooldown_seconds=1)
    probe.mode = "fail"
    assert _status(world) == 502
    time.sleep(1.1)
    probe.mode = "ok"

    def failed(call_id: Any, **kwargs: Any) -> None:
        raise RuntimeError("the database went away")

    with monkeypatch.context() as patch:
        patch.setattr(runner, "execute", failed)
        assert _status(world) == 500
    assert _status(world) == 200, "the next call is the probe"
    assert _status(world) == 200, "and its success closed the breaker"


STOCK_API = {
    "openapi": "3.1.0",
    "info": {"title": "Stock", "version": "1"},
    "paths": {
        "/levels": {
            "get": {
                "operationId": "levels",
                "summary": "Stock levels.",
                "responses": {"200": {"description": "The levels"}},
            }
        }
    },
}


def test_an_http_upstream_that_cannot_be_reached_opens_it(world: World) -> None:
    """Nothing listens where the upstream should be: no tool answered "no", none answered at
    all. Each call fails unsent (upstream_unreachable, retryable), and the failures open the
    breaker as timeouts do, so a dead upstream is rested instead of being asked again."""
    closed = f"http://127.0.0.1:{free_port()}"
    upstream = register_upstream(
        name="stock", kind=Upstream.Kind.OPENAPI, url=f"{closed}/openapi.json", base_url=closed
    )
    sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: openapi.offer(
            STOCK_API, upstream=u.name, document_url=u.url, base_url=u.base_url
        ),
    )
    Tool.objects.filter(name="stock__levels").update(
        max_attempts=1, breaker_threshold=2, breaker_cooldown_seconds=60
    )
    world.agent.allowed_tools.add(Tool.objects.get(name="stock__levels"))
    call = {"tool": "stock__levels", "arguments": {}, "session_id": "run-1"}
    answers = [world.api().submit(call) for _ in range(3)]
    assert [a.status_code for a in answers] == [502, 502, 503], [a.json() for a in answers]
    assert answers[0].json()["error"]["details"]["tool_code"] == "upstream_unreachable"
    assert answers[2].json()["error"]["code"] == "circuit_open"


def test_writes_are_refused_while_the_circuit_is_open(world: World) -> None:
    Tool.objects.filter(name="send_email").update(breaker_threshold=2)
    for _ in range(2):  # two executions whose outcome stayed unknown
        breaker.record_outcome(tool_name="send_email", status="unknown", error={"code": "timeout"})
    response = world.api().submit(SEND_EMAIL)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "circuit_open"
    assert 59 <= int(response["Retry-After"]) <= 60


def test_a_write_waiting_for_review_does_not_hold_the_half_open_probe(world: World) -> None:
    """Half-open, the first write submitted would take the probe slot and only wait for a
    person: every other call of the tool refused for the whole probe lease, again and again."""
    Tool.objects.filter(name="send_email").update(breaker_threshold=1, breaker_cooldown_seconds=1)
    breaker.record_outcome(tool_name="send_email", status="unknown", error={"code": "timeout"})
    assert _status(world, SEND_EMAIL) == 503
    time.sleep(1.1)  # half-open
    for n in range(3):
        body = {**SEND_EMAIL, "arguments": {**SEND_EMAIL["arguments"], "subject": f"s{n}"}}
        answered = world.api().submit(body)
        assert answered.status_code == 202, answered.json()


@pytest.mark.django_db(transaction=True)
def test_writes_that_wait_for_a_person_are_accepted_together_while_half_open(
    live_world: World,
) -> None:
    """A write that only waits for a person needs no probe slot: accepted while another
    call probes the tool, and ten at once all accepted. Each took the slot for the moments
    of its transaction: a call arriving then was refused and told to wait a timeout."""
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=1000)
    Tool.objects.filter(name="send_email").update(breaker_threshold=1, breaker_cooldown_seconds=1)
    breaker.record_outcome(tool_name="send_email", status="unknown", error={"code": "timeout"})
    time.sleep(1.1)  # half-open

    def body(n: int) -> dict[str, Any]:
        return {**SEND_EMAIL, "arguments": {**SEND_EMAIL["arguments"], "subject": f"s{n}"}}

    probing = breaker.admit(Tool.objects.get(name="send_email"))
    assert probing.probe_token, "another call probes the tool"
    assert _status(live_world, body(-1)) == 202
    breaker.release(probing)
    codes = in_threads(10, lambda n: _status(live_world, body(n)))
    assert codes == [202] * 10
    assert breaker.admit(Tool.objects.get(name="send_email")).probe_token, "still free"


def test_a_write_approved_as_it_arrives_is_the_one_probe_of_a_half_open_breaker(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    """A write a rule approves at intake runs now: it is the probe, and the next writes are
    refused until its outcome is known, as for reads."""
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={"rules": [{"when": "true", "then": "approve"}]},
        changed_by=world.alice,
    )
    Tool.objects.filter(name="send_email").update(breaker_threshold=1, breaker_cooldown_seconds=1)
    breaker.record_outcome(tool_name="send_email", status="unknown", error={"code": "timeout"})
    time.sleep(1.1)  # half-open
    with django_capture_on_commit_callbacks() as sent:
        codes = [
            world.api()
            .submit({**SEND_EMAIL, "arguments": {**SEND_EMAIL["arguments"], "subject": f"s{n}"}})
            .status_code
            for n in range(3)
        ]
    assert codes == [202, 503, 503]
    assert len(executions_sent(sent)) == 1


@override_settings(REDIS_URL="")
def test_the_embedded_breaker_admits_one_probe_among_threads() -> None:
    tool = Tool(
        name="embedded-tool",
        risk=Risk.READ,
        timeout_seconds=2,
        max_attempts=1,
        breaker_threshold=2,
        breaker_cooldown_seconds=1,
    )
    store = breaker._store()
    assert isinstance(store, breaker._MemoryStore)
    for _ in range(2):
        store.failure(tool.name, threshold=2, cooldown_ms=300)
    with pytest.raises(breaker.CircuitOpen):
        breaker.admit(tool)
    time.sleep(0.35)

    def try_admit(_: int) -> str:
        try:
            return "probe" if breaker.admit(tool).probe_token else "closed"
        except breaker.CircuitOpen:
            return "refused"

    assert Counter(in_threads(30, try_admit)) == {"probe": 1, "refused": 29}
    assert store.success(tool.name) is True
    assert breaker.admit(tool).probe_token == ""


def test_an_operator_closes_an_open_breaker_with_a_reason(
    world: World, probe_tool_cleanup: None
) -> None:
    probe = install_probe_tool(world, breaker_threshold=2, breaker_cooldown_seconds=600)
    probe.mode = "fail"
    assert [_status(world) for _ in range(3)] == [502, 502, 503]

    out = StringIO()
    call_command("reset_breaker", "check_stock", "--reason", "inventory API fixed", stdout=out)
    assert out.getvalue().strip() == "breaker of check_stock closed"
    probe.mode = "ok"
    assert _status(world) == 200, "calls flow again before the cool-down ends"
    event = AuditEvent.objects.get(action="tool.breaker_closed", tool_name="check_stock")
    assert event.data == {"by_operator": True, "reason": "inventory API fixed", "was_open": True}

    with pytest.raises(CommandError, match="No tool named 'nope'"):
        call_command("reset_breaker", "nope", "--reason", "x")
    with pytest.raises(CommandError, match="reason"):
        call_command("reset_breaker", "check_stock", "--reason", "  ")
    # The embedded mode keeps the breaker in the server's memory: the command, a process of
    # its own, says so instead of closing (and auditing) a breaker nobody uses.
    with override_settings(REDIS_URL=""), pytest.raises(CommandError, match="restart the server"):
        call_command("reset_breaker", "check_stock", "--reason", "fixed")
    assert AuditEvent.objects.filter(action="tool.breaker_closed").count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tool", ["send_email", "get_customer"])
def test_calls_whose_workers_went_silent_past_their_leases_open_the_breaker(
    live_world: World, tool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that ignores its timeout is killed by Celery's hard time limit, and the
    lease sweep finds its call: that is the tool hanging, and it counts as a failure (a
    write becomes unknown, a read fails), or a tool that hangs every call would keep
    taking a worker for the hard limit's length, call after call, with the breaker closed."""
    monkeypatch.setattr(send, "send_execution", lambda call_id: None)
    Tool.objects.filter(name=tool).update(breaker_threshold=2, breaker_cooldown_seconds=60)
    for _ in range(2):
        call = claimed_call(live_world)[0] if tool == "send_email" else claimed_read(live_world)
        age_lease(call)
    assert sweeps.expire_leases() == 2

    read = {"tool": tool, "arguments": {"customer_id": "cus_0001"}, "session_id": "run-1"}
    refused = live_world.api().submit(SEND_EMAIL if tool == "send_email" else read)
    assert refused.status_code == 503, refused.content
    assert refused.json()["error"]["code"] == "circuit_open"
    assert AuditEvent.objects.filter(action="tool.breaker_opened", tool_name=tool).count() == 1


def claimed_read(world: World) -> ToolCall:
    """A read a web process claimed, to run it in its request."""
    call = received_read(world)
    assert claim_call(call_id=call.pk) is not None
    return call


@pytest.mark.django_db
def test_a_sweep_process_of_the_embedded_mode_records_no_breaker_it_does_not_hold(
    world: World,
) -> None:
    """The embedded mode keeps each process's breaker in its own memory, and its sweeps run
    in a process of their own (``run_sweeps --loop``), which admits no call: a breaker
    "opened" there refuses nothing, and the trail must not say that calls are refused."""
    Tool.objects.filter(name="send_email").update(breaker_threshold=2)
    with override_settings(REDIS_URL=""):
        for _ in range(2):
            age_lease(claimed_call(world)[0])
        assert sweeps.expire_leases() == 2
        breaker.reset("send_email")
    assert not AuditEvent.objects.filter(action="tool.breaker_opened").exists()


@pytest.mark.django_db
def test_a_call_taken_over_by_the_lease_sweep_counts_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker paused past its lease (a frozen VM, SIGSTOP) wakes up with its outcome: the
    sweep has told the breaker of that execution already, and the discarded outcome is not
    a second failure (one hung call would open a breaker of threshold 2)."""
    Tool.objects.filter(name="send_email").update(breaker_threshold=2)
    call = approved_call(world)

    def paused_past_its_lease(claim: Any) -> Outcome:
        age_lease(claim.call)
        assert sweeps.expire_leases() == 1
        return Outcome(status=Status.UNKNOWN, error={"code": "timeout", "message": "late"})

    monkeypatch.setattr(runner, "run_handler", paused_past_its_lease)
    runner.execute(call.pk)
    call.refresh_from_db()
    assert call.error["code"] == "lease_expired"  # the late outcome was discarded
    assert not AuditEvent.objects.filter(action="tool.breaker_opened").exists()
    breaker.reset("send_email")


def test_giving_a_probe_slot_back_without_redis_does_not_raise(
    world: World, probe_tool_cleanup: None, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The slot is given back where a request is already being refused or failing: Redis
    gone between the admission and there must not turn that answer into a 500. The slot is
    freed at its lease's end instead, and the log says so."""
    probe = install_probe_tool(world, breaker_threshold=1, breaker_cooldown_seconds=1)
    probe.mode = "fail"
    assert _status(world) == 502  # opened
    time.sleep(1.1)
    tool = Tool.objects.get(name="check_stock")
    admission = breaker.admit(tool)
    assert admission.probe_token, "half-open: this call is the probe"
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    breaker.release(admission)
    assert "could not be given back" in caplog.text


@pytest.mark.parametrize("how", ["rule", "retry"])
def test_a_probe_its_claim_refuses_gives_the_slot_back(
    world: World, how: str, django_capture_on_commit_callbacks: Any
) -> None:
    """A write approved as it arrives, or an agent's retry, is the half-open probe and runs
    later, in a worker. When the claim refuses to run it (the tool switched off meanwhile),
    no outcome frees the slot: every call of the tool was refused until its lease ended."""
    tool = world.tools["send_email"]
    if how == "rule":
        registry_services.update_policy(
            tool=tool, changes={"rules": [{"when": "true", "then": "approve"}]}, changed_by=None
        )
        call_id = None
    else:  # a write that failed (nothing to send to: no such customer), to be retried
        failed = world.api().submit(
            {
                "tool": "update_customer",
                "arguments": {"customer_id": "cus_0099", "changes": {"plan": "pro"}},
                "session_id": "run-1",
            }
        )
        call_id = failed.json()["id"]
        decide(call_id=call_id, reviewer=world.bob, verdict="approve", comment="")
        runner.execute(call_id)
        assert ToolCall.objects.get(pk=call_id).status == Status.FAILED
        tool = world.tools["update_customer"]
    Tool.objects.filter(pk=tool.pk).update(breaker_threshold=1, breaker_cooldown_seconds=1)
    breaker.record_outcome(tool_name=tool.name, status="unknown", error={"code": "timeout"})
    time.sleep(1.1)  # half-open
    if how == "rule":
        response = world.api().submit(SEND_EMAIL)
    else:
        response = world.api().client.post(
            f"/api/v1/tool-calls/{call_id}/retry", HTTP_AUTHORIZATION=f"Bearer {world.token}"
        )
    assert response.status_code == 202 and response.json()["status"] == "approved"
    call_id = response.json()["id"]
    with pytest.raises(breaker.CircuitOpen):
        breaker.admit(tool)  # it holds the probe slot

    Tool.objects.filter(pk=tool.pk).update(enabled=False)  # switched off before its claim
    with django_capture_on_commit_callbacks(execute=True):
        runner.execute(call_id)
    assert ToolCall.objects.get(pk=call_id).error["code"] == "tool_disabled"
    assert breaker.admit(tool).probe_token, "the refused probe gave its slot back"
