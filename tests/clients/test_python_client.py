"""The Python client (sync and async) against a live server: typed errors with the tool's
own code, long-poll, transient read failures retried and refusals not, writes never
re-sent, and an agent killed right after its submission resumes with the same key, with
steps numbered by default. Against scripted answers (``httpx.MockTransport``, the
server's own error bodies) and a server that never answers: retry pauses, a wait's
deadline, every error code typed with its whole answer kept."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from countersign_client import (
    AsyncCountersign,
    CallRejected,
    Countersign,
    DirectoryState,
    MemoryState,
    TransportError,
    errors,
    outcome,
)
from django.test import override_settings

from approvals.execution import runner
from approvals.guards import CANNOT_RUN
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from gateway import errors as server_errors
from gateway.models import IdempotencyRecord
from tests.clients.conftest import CLIENT_DIR
from tests.conftest import World, sandbox_effects
from tests.support import ROOT
from tests.support.longpoll import LongPollSpy
from tests.support.probe import install_probe_tool
from tests.support.workers import wait_for
from tools_registry.models import Tool

EMAIL_ARGS = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}


@pytest.mark.django_db(transaction=True)
def test_a_read_returns_its_result_and_refusals_are_typed(
    live_world: World, live_server: Any, probe_tool_cleanup: None
) -> None:
    with Countersign(live_server.url, live_world.token, backoff=0.05, state=MemoryState()) as cs:
        customer = cs.call("get_customer", {"customer_id": "cus_0002"}, session_id="s1")
        assert customer["name"] == "Grace Hopper"
        assert {t["name"] for t in cs.tools("mcp")} >= {"get_customer", "send_email"}

        with pytest.raises(errors.UnknownTool):
            cs.call("launch_rocket", {}, session_id="s1")
        with pytest.raises(errors.InvalidArguments) as invalid:
            cs.call("send_email", {"to": "nobody"}, session_id="s1")
        assert "$.to" in {d["path"] for d in invalid.value.details}
        Tool.objects.filter(name="send_email").update(rate_limit_per_agent="1/minute")
        cs.submit("send_email", EMAIL_ARGS, session_id="s1")
        with pytest.raises(errors.RateLimited) as limited:
            cs.submit("send_email", EMAIL_ARGS, session_id="s1")
        assert limited.value.retry_after and limited.value.retry_after >= 1

        # A read that fails transiently is asked again as a new request, up to read_attempts.
        probe = install_probe_tool(live_world)
        probe.fail_first = 2
        assert cs.call("check_stock", {"sku": "a-1"}, session_id="s2", step="stock")["in_stock"]
        assert probe.calls == 3
        assert ToolCall.objects.filter(tool__name="check_stock").count() == 3

        # A tool's refusal is its answer: raised at once, with the tool's own code.
        with pytest.raises(errors.ToolFailed) as refused:
            cs.call("get_customer", {"customer_id": "cus_9999"}, session_id="s3")
        assert refused.value.status == 422 and refused.value.retryable is False
        assert refused.value.tool_code == "customer_not_found"
        failed = ToolCall.objects.get(tool__name="get_customer", status="failed")
        assert refused.value.call and refused.value.call["id"] == str(failed.pk)


@pytest.mark.django_db(transaction=True)
def test_a_write_waits_for_the_reviewer_and_a_rejection_is_raised(
    live_world: World, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome: dict[str, Any] = {}
    server_side = LongPollSpy(monkeypatch)  # the live server runs in this process

    def agent() -> None:
        with Countersign(live_server.url, live_world.token, state=MemoryState()) as cs:
            try:
                cs.call("send_email", EMAIL_ARGS, session_id="s1", step="mail", wait_timeout=60)
            except CallRejected as exc:
                outcome["rejected"] = exc.comment

    thread = threading.Thread(target=agent)
    thread.start()
    server_side.wait_until_waiting()  # the client is now long-polling
    call = ToolCall.objects.get()
    assert call.status == Status.PENDING
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="reject", comment="No.")
    thread.join(timeout=60)
    assert outcome["rejected"] == "No."
    # The client's long-poll was answered because of the decision, not its wait running out.
    assert server_side.woken_by_a_message() == [True], server_side.pauses()


@pytest.mark.django_db(transaction=True)
@override_settings(MAX_WAITS_PER_AGENT=1)
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_wait_refused_for_the_agents_other_waits_pauses_and_waits_again(
    live_world: World, live_server: Any, monkeypatch: pytest.MonkeyPatch, flavour: str
) -> None:
    """Past the agent's MAX_WAITS_PER_AGENT waits a long-poll is refused with 429
    too_many_waits and Retry-After. That says nothing of the call: ``call`` pauses and waits
    again (past its read_attempts too) and ends with the call's outcome, not with a refusal
    a model would take for the call's own."""
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    server_side = LongPollSpy(monkeypatch)  # the live server runs in this process
    refused = threading.Event()
    outcome: dict[str, Any] = {}

    def seen(response: httpx.Response) -> None:
        if response.status_code == 429:
            refused.set()

    async def seen_async(response: httpx.Response) -> None:
        seen(response)

    def agent() -> None:
        args = {**EMAIL_ARGS, "subject": "Second"}
        try:
            if flavour == "sync":
                with Countersign(live_server.url, live_world.token, state=MemoryState(),
                                 read_attempts=1, event_hooks={"response": [seen]}) as cs:  # fmt: skip
                    cs.call("send_email", args, session_id="s2", step="mail", wait_timeout=60)
            else:

                async def run() -> None:
                    async with AsyncCountersign(live_server.url, live_world.token,
                                                state=MemoryState(), read_attempts=1,
                                                event_hooks={"response": [seen_async]}) as acs:  # fmt: skip
                        await acs.call("send_email", args, session_id="s2", wait_timeout=60)

                asyncio.run(run())
        except CallRejected as exc:
            outcome["rejected"] = exc.comment
        except Exception as exc:
            outcome["raised"] = exc

    with Countersign(live_server.url, live_world.token, state=MemoryState()) as cs:
        held = cs.submit("send_email", EMAIL_ARGS, session_id="s1")
        holder = threading.Thread(target=cs.get, args=(held["id"],), kwargs={"wait": 30})
        holder.start()
        server_side.wait_until_waiting()  # the agent's one place is taken
        thread = threading.Thread(target=agent)
        thread.start()
        assert refused.wait(timeout=30), "the second wait was not refused"
        decide(call_id=held["id"], reviewer=live_world.bob, verdict="reject", comment="First.")
        holder.join(timeout=30)
        server_side.wait_until_waiting(count=2)  # the client asked again and now waits
        waited = ToolCall.objects.get(session_id="s2")
        decide(call_id=waited.pk, reviewer=live_world.bob, verdict="reject", comment="Second.")
        thread.join(timeout=60)
    assert outcome == {"rejected": "Second."}


@pytest.mark.django_db(transaction=True)
def test_a_write_without_an_answer_is_not_resent(
    live_world: World, live_server: Any, tmp_path: Path
) -> None:
    def lose_the_answer(response: httpx.Response) -> None:
        if response.request.method == "POST":
            raise httpx.ReadError("connection reset by peer")

    state = tmp_path / "state"
    with (
        Countersign(
            live_server.url,
            live_world.token,
            state=state,
            event_hooks={"response": [lose_the_answer]},
        ) as cs,
        pytest.raises(TransportError),
    ):
        cs.submit("send_email", EMAIL_ARGS, session_id="s1", step="mail")
    assert ToolCall.objects.count() == 1
    # Running the step again (here: without the fault) answers with the same call.
    with Countersign(live_server.url, live_world.token, state=state) as cs:
        again = cs.submit("send_email", EMAIL_ARGS, session_id="s1", step="mail")
    assert again["id"] == str(ToolCall.objects.get().pk)
    assert DirectoryState(state).step("s1", "mail")["call_id"] == again["id"]


AGENT = textwrap.dedent(
    """
    import json, os, signal, sys
    from countersign_client import Countersign

    def crash_after_submit(response):
        # Dies the moment the server's answer to the second step arrives: the call exists,
        # the agent never learnt its id.
        if os.environ.get("CRASH") and response.request.method == "POST":
            if json.loads(response.request.content)["tool"] == "send_email":
                os.kill(os.getpid(), signal.SIGKILL)

    # No step names: the calls of the session are numbered in order, and persisted.
    cs = Countersign(sys.argv[1], sys.argv[2], state=sys.argv[3],
                     event_hooks={"response": [crash_after_submit]})
    found = cs.call("get_customer", {"customer_id": "cus_0002"}, session_id="task-7")
    result = cs.call("send_email", json.loads(sys.argv[4]), session_id="task-7",
                     reasoning=f"Confirm to {found['name']}", wait_timeout=60)
    print(json.dumps({"result": result, "call_id": cs.state.step("task-7", "#2")["call_id"]}))
    """
)


@pytest.mark.django_db(transaction=True)
def test_an_agent_killed_after_submitting_resumes_with_the_same_key(
    live_world: World, live_server: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    command = [
        sys.executable,
        "-c",
        AGENT,
        live_server.url,
        live_world.token,
        str(state),
        json.dumps(EMAIL_ARGS),
    ]
    env = {**os.environ, "PYTHONPATH": str(CLIENT_DIR)}
    first = subprocess.run(
        command, env={**env, "CRASH": "1"}, capture_output=True, timeout=60, check=False
    )
    assert first.returncode == -signal.SIGKILL, first.stderr.decode()[-2000:]
    saved = DirectoryState(state).steps("task-7")
    assert set(saved) == {"#1", "#2"}
    assert "call_id" not in saved["#2"], "the crash came before the client recorded the call"
    call = ToolCall.objects.get(tool__name="send_email")
    assert call.request_key == saved["#2"]["key"]

    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: DirectoryState(state).step("task-7", "#2").get("call_id"),
            timeout=20,
            message="the restarted agent to find its call",
        )
        decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve", comment="ok")
        runner.execute(call.pk)  # the worker's part
        out, err = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err.decode()[-2000:]
    printed = json.loads(out)
    assert printed["call_id"] == str(call.pk)
    assert printed["result"]["status"] == "sent"
    assert ToolCall.objects.filter(tool__name="send_email").count() == 1
    assert [e["idempotency_key"] for e in sandbox_effects()] == [f"countersign-{call.pk}"]


@pytest.mark.django_db(transaction=True)
def test_a_step_resumed_after_its_keys_answer_expired_is_the_call_it_made(
    live_world: World, live_server: Any
) -> None:
    """An agent back after IDEMPOTENCY_KEY_TTL (a run paused over a weekend) resumes its
    step: the key's answer is gone, Countersign refuses the key (422) and names the call it
    made. The step is that call, waited for and its result returned, sync and async: not
    an error the agent answers by proposing the effect again under a new key."""
    state = MemoryState()
    with Countersign(live_server.url, live_world.token, state=state) as cs:
        proposed = cs.submit("send_email", EMAIL_ARGS, session_id="s1", step="mail")
    call = ToolCall.objects.get(pk=proposed["id"])
    IdempotencyRecord.objects.all().delete()  # what the sweep does past the TTL
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve", comment="ok")
    runner.execute(call.pk)

    with Countersign(live_server.url, live_world.token, state=state) as cs:
        result = cs.call("send_email", EMAIL_ARGS, session_id="s1", step="mail")
    assert result["status"] == "sent" and result.call["id"] == str(call.pk)

    async def resume() -> Any:
        async with AsyncCountersign(live_server.url, live_world.token, state=state) as acs:
            return await acs.call("send_email", EMAIL_ARGS, session_id="s1", step="mail")

    assert asyncio.run(resume()).call["id"] == str(call.pk)
    assert ToolCall.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_step_asked_something_else_after_its_keys_answer_expired_is_not_the_old_call(
    live_world: World, live_server: Any
) -> None:
    """Past IDEMPOTENCY_KEY_TTL Countersign refuses the key as expired whatever the body,
    and names the call the key made. A rerun that asks something else at that step (another
    recipient: a model's new answer, a session id used again) is not that call: the old
    mail was not this one. The expiry is raised, sync and async, as within the TTL the
    reused key would have been."""
    state = MemoryState()
    with Countersign(live_server.url, live_world.token, state=state) as cs:
        proposed = cs.submit("send_email", EMAIL_ARGS, session_id="s1", step="mail")
    call = ToolCall.objects.get(pk=proposed["id"])
    IdempotencyRecord.objects.all().delete()  # what the sweep does past the TTL
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve", comment="ok")
    runner.execute(call.pk)
    other = {**EMAIL_ARGS, "to": "grace@example.com"}

    with (
        Countersign(live_server.url, live_world.token, state=state) as cs,
        pytest.raises(errors.IdempotencyKeyExpired) as expired,
    ):
        cs.call("send_email", other, session_id="s1", step="mail")
    assert expired.value.details == {"call_id": str(call.pk)}

    async def rerun() -> Any:
        async with AsyncCountersign(live_server.url, live_world.token, state=state) as acs:
            return await acs.submit("send_email", other, session_id="s1", step="mail")

    with pytest.raises(errors.IdempotencyKeyExpired):
        asyncio.run(rerun())
    assert ToolCall.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_async_client_has_the_same_surface(live_world: World, live_server: Any) -> None:
    async def agent() -> dict[str, Any]:
        async with AsyncCountersign(live_server.url, live_world.token, state=MemoryState()) as cs:
            found = await cs.call("get_customer", {"customer_id": "cus_0002"}, session_id="a")
            pending = await cs.submit("send_email", EMAIL_ARGS, session_id="a")
            assert pending["status"] == "pending"
            assert (await cs.submit("send_email", EMAIL_ARGS, session_id="a", step="#2"))[
                "id"
            ] == pending["id"], "the same step replays the same call"
            cancelled = await cs.cancel(pending["id"])
            with pytest.raises(errors.ToolFailed) as refused:
                await cs.call("get_customer", {"customer_id": "cus_9999"}, session_id="a")
            assert refused.value.tool_code == "customer_not_found"
            tools = await cs.tools("openai-responses")
            return {"name": found["name"], "cancelled": cancelled["status"], "tools": tools}

    seen = asyncio.run(agent())
    assert seen["name"] == "Grace Hopper" and seen["cancelled"] == "cancelled"
    assert {t["name"] for t in seen["tools"]} >= {"send_email"}


CALL_ID = "00000000-0000-0000-0000-000000000001"


def answer(error: server_errors.ApiError) -> httpx.Response:
    """The server's answer with ``error``: its status, body and headers."""
    return httpx.Response(error.status, json=error.body(), headers=error.headers)


def scripted(*answers: httpx.Response, sent: list[httpx.Request] | None = None) -> Countersign:
    """A client whose requests get ``answers`` in order (and are kept in ``sent``)."""
    remaining = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        if sent is not None:
            sent.append(request)
        return next(remaining)

    return Countersign(
        "http://cs", "token", state=MemoryState(), transport=httpx.MockTransport(handler)
    )


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The URL of a server that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_read_answered_unavailable_waits_for_its_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    cs = scripted(answer(server_errors.unavailable()), httpx.Response(200, json=[]))
    assert cs.tools() == []
    assert slept == [5.0], "the longer of the backoff (at most 0.5 s) and Retry-After: 5"


@pytest.mark.parametrize(("said", "heeded"), [("86400", 300.0), ("inf", 0.5), ("nan", 0.5)])
def test_a_retry_after_from_a_proxy_is_heeded_up_to_five_minutes(
    monkeypatch: pytest.MonkeyPatch, said: str, heeded: float
) -> None:
    """A proxy's Retry-After of a day held the step a day; "inf" raised OverflowError."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    busy = httpx.Response(503, text="busy", headers={"Retry-After": said})
    cs = scripted(busy, httpx.Response(200, json=[]))
    assert cs.tools() == []
    assert len(slept) == 1 and slept[0] <= heeded


def test_an_internal_error_on_a_write_is_retried_with_backoff_and_the_same_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    sent: list[httpx.Request] = []
    pending = httpx.Response(202, json={"id": CALL_ID, "status": "pending"})
    cs = scripted(*[answer(server_errors.internal_error())] * 4, pending, sent=sent)
    assert cs.submit("send_email", EMAIL_ARGS, session_id="s1")["id"] == CALL_ID
    assert len({request.headers["Idempotency-Key"] for request in sent}) == 1
    assert len(slept) == 4
    for attempt, pause in enumerate(slept, start=1):
        doubled = cs.backoff * 2 ** (attempt - 1)
        assert doubled / 2 <= pause <= doubled, f"pause {attempt} was {pause} s"


def test_wait_gives_up_when_its_timeout_runs_out(silent_server: str) -> None:
    with Countersign(silent_server, "token", state=MemoryState(), timeout=0.5) as cs:
        started = time.monotonic()
        with pytest.raises(errors.WaitTimeout) as timed_out:
            cs.wait(CALL_ID, timeout=1, seen="pending")
    assert time.monotonic() - started < 1.5
    assert timed_out.value.call == {"id": CALL_ID, "status": "pending"}


def test_the_async_wait_gives_up_when_its_timeout_runs_out(silent_server: str) -> None:
    async def wait() -> None:
        async with AsyncCountersign(silent_server, "token", state=MemoryState(), timeout=0.5) as cs:
            await cs.wait(CALL_ID, timeout=1, seen="pending")

    started = time.monotonic()
    with pytest.raises(errors.WaitTimeout):
        asyncio.run(wait())
    assert time.monotonic() - started < 1.5


def test_cancel_and_retry_without_an_answer_raise_the_clients_transport_error() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = httpx.MockTransport(unreachable)
    cs = Countersign("http://cs", "token", state=MemoryState(), transport=transport)
    with pytest.raises(TransportError):
        cs.cancel(CALL_ID)
    with pytest.raises(TransportError):
        cs.retry(CALL_ID)

    async def act() -> None:
        async with AsyncCountersign(
            "http://cs", "token", state=MemoryState(), transport=transport
        ) as acs:
            for action in (acs.cancel, acs.retry):
                with pytest.raises(TransportError):
                    await action(CALL_ID)

    asyncio.run(act())


def test_every_error_code_the_server_answers_with_has_a_class() -> None:
    source = (ROOT / "gateway" / "errors.py").read_text()
    codes = set(re.findall(r'\bcode="([a-z_]+)"', source)) | set(CANNOT_RUN)
    # Over MCP a waited-for call's unhappy ending is an error; over the REST API it is the
    # call's status, which the client raises as CallRejected, CallExpired, CallCancelled.
    endings_over_mcp = {"call_rejected", "approval_expired", "call_cancelled"}
    assert endings_over_mcp <= codes
    untyped = sorted(codes - endings_over_mcp - set(errors.ERRORS_BY_CODE))
    assert untyped == [], f"give these error codes a class in errors.py: {untyped}"
    assert all(cls.code == code for code, cls in errors.ERRORS_BY_CODE.items())


def test_an_error_keeps_the_whole_answer() -> None:
    refusal = server_errors.refused_by_policy(
        "send_email", "No mail to competitors.", rule=2, policy_version=7
    )
    with pytest.raises(errors.RefusedByPolicy) as refused:
        scripted(answer(refusal)).submit("send_email", EMAIL_ARGS, session_id="s1")
    assert refused.value.body == refusal.body()
    assert refused.value.details == {"rule": 2, "policy_version": 7}
    assert refused.value.call is None

    proxy_page = "<html><body>502 Bad Gateway</body></html>"
    with pytest.raises(errors.ApiError) as failed:
        scripted(httpx.Response(502, text=proxy_page)).cancel(CALL_ID)
    assert failed.value.code == "http_error"
    assert failed.value.body == proxy_page


@pytest.mark.django_db(transaction=True)
def test_a_write_without_an_answer_names_its_step_so_the_same_process_can_resume_it(
    live_world: World, live_server: Any
) -> None:
    """An agent that catches the TransportError and, as told, runs the step again in the
    same process needs the step's name: an unnamed call made again is step #2, a new key,
    a second e-mail. The error names the step, and that step replays the first call."""
    lost: list[str] = []

    def lose_the_first_answer(response: httpx.Response) -> None:
        if response.request.method == "POST" and not lost:
            lost.append(response.request.headers["Idempotency-Key"])
            raise httpx.ReadError("connection reset by peer")

    hooks = {"response": [lose_the_first_answer]}
    with Countersign(
        live_server.url, live_world.token, state=MemoryState(), event_hooks=hooks
    ) as cs:
        with pytest.raises(TransportError) as no_answer:
            cs.call("send_email", EMAIL_ARGS, session_id="s1", wait_timeout=1)
        assert (no_answer.value.session_id, no_answer.value.step) == ("s1", "#1")
        assert no_answer.value.idempotency_key == lost[0]
        assert "step='#1'" in str(no_answer.value)
        again = cs.submit("send_email", EMAIL_ARGS, session_id="s1", step=no_answer.value.step)
    assert again["id"] == str(ToolCall.objects.get().pk)


def test_a_proxys_5xx_to_a_write_is_asked_again_with_the_same_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load balancer's 502/504 (BEHIND_PROXY) is no answer from Countersign: the write
    may have been received. Asked again with the same key, like internal_error; never a
    non-retryable ApiError the agent would take for a refusal."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    sent: list[httpx.Request] = []
    gateway_timeout = httpx.Response(504, text="<html><body>504 Gateway Time-out</body></html>")
    bad_gateway = httpx.Response(502, text="<html><body>502 Bad Gateway</body></html>")
    pending = httpx.Response(202, json={"id": CALL_ID, "status": "pending"})
    cs = scripted(gateway_timeout, bad_gateway, pending, sent=sent)
    assert cs.submit("send_email", EMAIL_ARGS, session_id="s1")["id"] == CALL_ID
    assert len(sent) == 3
    assert len({request.headers["Idempotency-Key"] for request in sent}) == 1

    async def submit() -> dict[str, Any]:
        answers = iter(
            [
                httpx.Response(504, text="<html><body>504 Gateway Time-out</body></html>"),
                httpx.Response(202, json={"id": CALL_ID, "status": "pending"}),
            ]
        )
        async with AsyncCountersign(
            "http://cs",
            "token",
            state=MemoryState(),
            transport=httpx.MockTransport(lambda request: next(answers)),
        ) as acs:
            return await acs.submit("send_email", EMAIL_ARGS, session_id="s1")

    async def no_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    assert asyncio.run(submit())["id"] == CALL_ID


def test_a_proxys_5xx_that_outlasts_the_retries_is_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    bad_gateway = httpx.Response(502, text="<html><body>502 Bad Gateway</body></html>")
    cs = scripted(*[bad_gateway] * 50)
    with pytest.raises(TransportError) as no_answer:
        cs.submit("send_email", EMAIL_ARGS, session_id="s1", step="mail")
    assert no_answer.value.step == "mail"


def test_a_wait_that_runs_out_raises_wait_timeout_with_a_single_read_attempt(
    silent_server: str,
) -> None:
    """The last long-poll's timeout is cut to the wait's deadline: its running out is the
    wait's budget ending, WaitTimeout, not Countersign failing to answer."""
    with (
        Countersign(
            silent_server, "token", state=MemoryState(), timeout=0.5, read_attempts=1
        ) as cs,
        pytest.raises(errors.WaitTimeout),
    ):
        cs.wait(CALL_ID, timeout=1, seen="pending")

    async def wait() -> None:
        async with AsyncCountersign(
            silent_server, "token", state=MemoryState(), timeout=0.5, read_attempts=1
        ) as acs:
            await acs.wait(CALL_ID, timeout=1, seen="pending")

    with pytest.raises(errors.WaitTimeout):
        asyncio.run(wait())


def test_a_token_read_with_its_newline_is_sent_without_it_and_never_quoted() -> None:
    """A token read from a file or a mounted secret keeps its newline: every request failed
    with a TransportError ("run the step again") quoting the whole token, as did its
    cause, into the agent's logs and tracebacks."""
    sent: list[httpx.Request] = []
    pending = httpx.Response(202, json={"id": CALL_ID, "status": "pending"})

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return pending

    transport = httpx.MockTransport(handler)
    with Countersign(
        "http://cs", "cs_0123456789_secret\n", state=MemoryState(), transport=transport
    ) as cs:
        cs.submit("send_email", EMAIL_ARGS, session_id="s1")
    assert sent[0].headers["Authorization"] == "Bearer cs_0123456789_secret"

    for client in (Countersign, AsyncCountersign):
        with pytest.raises(ValueError) as refused:
            client("http://cs", "cs_0123456789_se\ncret", state=MemoryState())
        assert "secret" not in str(refused.value) and "0123456789" not in str(refused.value)


def test_errors_survive_pickling() -> None:
    """An agent running its tool calls in a process pool (or a task queue) gets the error
    back pickled: unpickling every API error, CallEnded and WaitTimeout raised TypeError
    (their arguments are not ``args``), and the agent saw that instead of the refusal."""
    limited = server_errors.rate_limited(scope="agent", limit="1/minute", retry_after=7)
    with pytest.raises(errors.RateLimited) as refused:
        scripted(answer(limited)).submit("send_email", EMAIL_ARGS, session_id="s1")
    rejected = {"id": CALL_ID, "status": "rejected", "decision": {"comment": "No."}}
    with pytest.raises(CallRejected) as ended:
        outcome(rejected)
    raised: list[Exception] = [
        refused.value,
        ended.value,
        errors.WaitTimeout({"id": CALL_ID, "status": "pending"}),
    ]
    for exc in raised:
        again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - the test's own objects
        assert type(again) is type(exc) and str(again) == str(exc)
        assert vars(again) == vars(exc)


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(301, headers={"Location": "https://cs/api/v1/tool-calls"}),
        httpx.Response(200, text="<html><body>Sign in to the Wi-Fi</body></html>"),
    ],
    ids=["redirect", "page"],
)
def test_an_answer_that_is_not_countersigns_is_the_clients_error(reply: httpx.Response) -> None:
    """A proxy's redirect (http to https) or a page (a captive portal's) answering a
    proposal, a read or an action crashed the agent with a TypeError (no JSON taken for a
    call); it is an ApiError saying what came back, and where a redirect pointed."""

    def answered(request: httpx.Request) -> httpx.Response:
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)

    transport = httpx.MockTransport(answered)
    cs = Countersign("http://cs", "token", state=MemoryState(), transport=transport)
    for verb in (
        lambda: cs.submit("send_email", EMAIL_ARGS, session_id="s1"),
        lambda: cs.call("send_email", EMAIL_ARGS, session_id="s1"),
        lambda: cs.get(CALL_ID),
        lambda: cs.cancel(CALL_ID),
        cs.tools,
    ):
        with pytest.raises(errors.ApiError) as refused:
            verb()
        assert refused.value.code == "http_error"
        assert f"HTTP {reply.status_code}" in refused.value.message
        if reply.status_code == 301:
            assert "https://cs/api/v1/tool-calls" in refused.value.message

    async def act() -> None:
        async with AsyncCountersign(
            "http://cs", "token", state=MemoryState(), transport=transport
        ) as acs:
            for verb in (
                acs.submit("send_email", EMAIL_ARGS, session_id="s1"),
                acs.call("send_email", EMAIL_ARGS, session_id="s1"),
                acs.get(CALL_ID),
                acs.retry(CALL_ID),
                acs.tools(),
            ):
                with pytest.raises(errors.ApiError) as refused:
                    await verb
                assert refused.value.code == "http_error"

    asyncio.run(act())


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, json={"status": "ok"}),
        httpx.Response(202, json={"id": 7, "status": "pending"}),
        httpx.Response(200, json=["not", "a", "call"]),
    ],
    ids=["health-check", "id-not-a-string", "list"],
)
def test_json_that_is_not_a_call_is_the_clients_error(reply: httpx.Response) -> None:
    """Another service's JSON at the client's URL (a health check's ``{"status": "ok"}``)
    crashed a proposal, a read or an action with a bare KeyError (or TypeError, ValueError):
    it is an ApiError asking whether the URL is Countersign's, as a page without JSON is."""

    def answered(request: httpx.Request) -> httpx.Response:
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)

    transport = httpx.MockTransport(answered)
    cs = Countersign("http://cs", "token", state=MemoryState(), transport=transport)
    for verb in (
        lambda: cs.submit("send_email", EMAIL_ARGS, session_id="s1"),
        lambda: cs.call("send_email", EMAIL_ARGS, session_id="s1"),
        lambda: cs.get(CALL_ID),
        lambda: cs.wait(CALL_ID, timeout=1),
        lambda: cs.cancel(CALL_ID),
        lambda: cs.retry(CALL_ID),
    ):
        with pytest.raises(errors.ApiError) as refused:
            verb()
        assert refused.value.code == "http_error"
        assert "is the client's URL Countersign's?" in refused.value.message
        assert refused.value.body == reply.json()

    async def act() -> None:
        async with AsyncCountersign(
            "http://cs", "token", state=MemoryState(), transport=transport
        ) as acs:
            for verb in (
                acs.submit("send_email", EMAIL_ARGS, session_id="s1"),
                acs.call("send_email", EMAIL_ARGS, session_id="s1"),
                acs.get(CALL_ID),
                acs.wait(CALL_ID, timeout=1),
                acs.cancel(CALL_ID),
                acs.retry(CALL_ID),
            ):
                with pytest.raises(errors.ApiError) as refused:
                    await verb
                assert refused.value.code == "http_error"

    asyncio.run(act())


PROXY_PAGE = "<html><body>502 Bad Gateway</body></html>"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(502, text=PROXY_PAGE),
        httpx.Response(503, json={"error": {"code": "unavailable", "message": "try again"}}),
        httpx.Response(500, json={"error": {"code": "internal_error", "message": "sorry"}}),
    ],
    ids=["proxy-502", "countersign-503", "countersign-500"],
)
def test_a_5xx_to_the_wait_that_outlasts_the_retries_is_no_answer(
    monkeypatch: pytest.MonkeyPatch, failure: httpx.Response
) -> None:
    """A write accepted, then every try of its long-poll answered with a server failure, by
    the load balancer (Countersign restarting) or by Countersign itself (its database
    restarting): call() raised an ApiError (http_error, unavailable), which the adapters
    hand the model as a refusal; the model proposes the write again, as a new step with a
    new key, while the first call still waits and runs once approved. The call's fate is
    not known: TransportError naming the step, like the proposal's."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    pending = {"id": CALL_ID, "status": "pending"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=pending)
        return httpx.Response(failure.status_code, content=failure.content, headers=failure.headers)

    transport = httpx.MockTransport(handler)
    cs = Countersign("http://cs", "token", state=MemoryState(), transport=transport)
    with pytest.raises(TransportError) as no_answer:
        cs.call("send_email", EMAIL_ARGS, session_id="s1", step="mail")
    assert no_answer.value.step == "mail"

    async def no_sleep(seconds: float) -> None:
        return None

    async def call() -> None:
        async with AsyncCountersign(
            "http://cs", "token", state=MemoryState(), transport=transport
        ) as acs:
            await acs.call("send_email", EMAIL_ARGS, session_id="s1", step="mail")

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    with pytest.raises(TransportError) as async_no_answer:
        asyncio.run(call())
    assert async_no_answer.value.step == "mail"


def test_countersigns_own_5xx_asked_for_a_call_is_its_error() -> None:
    """Outside call()'s wait, a GET answered by Countersign's own failure is that answer."""
    failure = {"error": {"code": "unavailable", "message": "try again", "retryable": True}}
    with pytest.raises(errors.ApiError) as refused:
        scripted(*[httpx.Response(503, json=failure)] * 5).get(CALL_ID)
    assert refused.value.code == "unavailable"


READ_TOOLS = {"search_docs", "get_customer"}
USER_ROLES = {"viewer": {"risks": ["read"]}, "support": {"risks": ["read", "write"]}}


def _names(tools: list[dict[str, Any]]) -> set[str]:
    return {tool["function"]["name"] for tool in tools}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_agent_forwards_its_users_token_or_asserts_their_roles(
    live_world: World, live_server: Any, identity_providers: Any, flavour: str
) -> None:
    """The end user as both ways of naming them reach the server: a user's token in its
    header (never in the step's fingerprint), and ``{"id", "roles"}`` from a trusted agent;
    the tool list and the call see the same user."""
    from tools_registry import services as registry_services
    from tools_registry.models import Agent

    agent = live_world.agent
    provider = identity_providers()
    agent.user_roles_from = Agent.UserRoles.VERIFIED
    agent.identity_provider = provider.row
    agent.role_scopes = USER_ROLES
    registry_services.save_agent(agent=agent, changed_by=None)

    def as_ada(make: Any, **user: Any) -> tuple[set[str], dict[str, Any]]:
        if flavour == "sync":
            with Countersign(live_server.url, live_world.token, state=MemoryState()) as cs:
                return _names(cs.tools(**user)), make(cs, **user)

        async def run() -> tuple[set[str], dict[str, Any]]:
            async with AsyncCountersign(
                live_server.url, live_world.token, state=MemoryState()
            ) as cs:
                return _names(await cs.tools(**user)), await make(cs, **user)

        return asyncio.run(run())

    def mail(cs: Any, **user: Any) -> Any:
        return cs.submit("send_email", EMAIL_ARGS, session_id="s1", step="mail", **user)

    viewer_token = provider.token("ada@example.com", ["viewer"])
    tools, _ = as_ada(lambda cs, **user: cs.tools(**user), user_token=viewer_token)
    assert tools == READ_TOOLS
    tools, call = as_ada(mail, user_token=provider.token("ada@example.com", ["support"]))
    assert "send_email" in tools and call["status"] == "pending"
    stored = ToolCall.objects.get(pk=call["id"])
    assert (stored.on_behalf_of, stored.end_user_source) == ("ada@example.com", "verified")

    agent.user_roles_from = Agent.UserRoles.ASSERTED
    agent.identity_provider = None
    agent.assertable_roles = list(USER_ROLES)
    registry_services.save_agent(agent=agent, changed_by=None)
    grace = {"id": "grace", "roles": ["viewer"]}
    tools, _ = as_ada(lambda cs, **user: cs.tools(**user), on_behalf_of=grace)
    assert tools == READ_TOOLS
    with pytest.raises(errors.ApiError) as refused:
        as_ada(mail, on_behalf_of=grace)
    assert refused.value.code == "tool_not_allowed_for_user"
