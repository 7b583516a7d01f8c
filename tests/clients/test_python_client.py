"""The Python client (sync and async) against a live server: typed errors with the tool's
own code, long-poll, transient read failures retried and refusals not, writes never
re-sent, and an agent killed right after its submission resumes with the same key, with
steps numbered by default."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
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
    verify_webhook,
)

from approvals.execution import runner
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from gateway import webhooks
from tests.clients.conftest import CLIENT_DIR
from tests.conftest import World, sandbox_effects
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
        assert ToolCall.objects.filter(tool__name="get_customer", status="failed").count() == 1


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


def test_the_client_verifies_webhook_signatures() -> None:
    body = b'{"type": "call.succeeded"}'
    old, new = "whsec_" + "b2xkLXNlY3JldC1rZXk=", "whsec_" + "bmV3LXNlY3JldC1rZXk="
    headers = webhooks.sign([new, old], "msg_1", int(time.time()), body)
    assert verify_webhook(new, body, headers)
    assert verify_webhook(old, body, headers), "either signature of a rotation verifies"
    assert verify_webhook(["whsec_" + "b3RoZXI=", new], body, headers)
    assert not verify_webhook(new, body + b"x", headers)
    assert not verify_webhook("whsec_" + "b3RoZXI=", body, headers)
    assert not verify_webhook(new, body, {**headers, "webhook-id": "msg_2"})
