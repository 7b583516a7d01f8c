"""The mock-model harness (countersign_client.testing) driving a real agent loop against a
live Countersign: approvals, rejections, invalid arguments with the suggestion fed back,
rate limits, the rounds limit, and a crash and rerun, without an LLM."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from countersign_client import Countersign, MemoryState
from countersign_client.integrations._common import Refusal, call_sync
from countersign_client.testing import ScriptedModel, final, run_agent, tool_call
from django.utils import timezone

from approvals.execution.claim import claim_call
from approvals.execution.finish import expire_lease
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from tests.conftest import World
from tests.support.reviewer import reviewing
from tools_registry.models import Tool

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}


def client(world: World, server: Any, **options: Any) -> Countersign:
    return Countersign(server.url, world.token, state=MemoryState(), backoff=0.05, **options)


def test_an_approved_write_and_a_read_reach_the_model(live_world: World, live_server: Any) -> None:
    model = ScriptedModel(
        [
            [tool_call("get_customer", {"customer_id": "cus_0002"})],
            [tool_call("send_email", EMAIL)],
            lambda messages: final(json.loads(messages[-1]["content"])["result"]["status"]),
        ]
    )
    with reviewing(live_world.bob) as decided, client(live_world, live_server) as cs:
        transcript = run_agent(cs, model, session_id="h-1")
    assert transcript.outcome == "answered" and transcript.answer == "sent"
    assert transcript.tool_results()[0]["result"]["name"] == "Grace Hopper"
    assert [c.tool.name for c in decided] == ["send_email"]


def test_a_call_a_reviewer_corrected_tells_the_model_what_ran(
    live_world: World, live_server: Any
) -> None:
    """As the MCP answer does: the loop fed back the result alone, and the model told its
    user the e-mail it asked for went out when a corrected one had."""
    corrected = {**EMAIL, "to": "grace@example.com"}
    model = ScriptedModel([[tool_call("send_email", EMAIL)], final("done")])
    with (
        reviewing(live_world.bob, correct=lambda call: corrected),
        client(live_world, live_server) as cs,
    ):
        transcript = run_agent(cs, model, session_id="h-edit")
    [fed] = transcript.fed_back
    assert fed["result"]["status"] == "sent"
    assert fed["arguments_edited"] is True and fed["arguments"] == corrected
    assert ToolCall.objects.get().arguments == corrected


def test_a_wait_that_runs_out_says_where_the_call_stands_not_that_it_has_not_run(
    live_world: World, live_server: Any
) -> None:
    """The harness fed back ``{"status": "pending"}`` and the adapters told the model the
    call "still waits for a person's approval; it has not run yet" whenever the wait ran
    out: for a call approved, whose worker then went silent (``unknown``: it may have taken
    effect), the model told its user nothing was done, or proposed it again."""
    with client(live_world, live_server) as cs:
        call_id = cs.submit("send_email", EMAIL, session_id="h-open", step="mail")["id"]
        pending = run_agent(
            cs,
            ScriptedModel([[tool_call("send_email", EMAIL, id="mail")], final("ok")]),
            session_id="h-open",
            wait_timeout=0.5,
        )
        [fed] = pending.fed_back
        assert (fed["status"], fed["call_id"]) == ("pending", call_id)
        assert "approval" in fed["message"] and "Do not propose it again" in fed["message"]

        decide(call_id=call_id, reviewer=live_world.bob, verdict="approve", comment="ok")
        assert claim_call(call_id=call_id) is not None  # a worker took it, then went silent
        assert expire_lease(call_id=call_id, now=timezone.now() + timedelta(hours=1))
        assert ToolCall.objects.get(pk=call_id).status == Status.UNKNOWN

        unknown = run_agent(
            cs,
            ScriptedModel([[tool_call("send_email", EMAIL, id="mail")], final("ok")]),
            session_id="h-open",
            wait_timeout=0.5,
        )
        with pytest.raises(Refusal) as told:
            call_sync(cs, "send_email", EMAIL, "mail", session_id="h-open", wait_timeout=0.5)
    [fed] = unknown.fed_back
    assert (fed["status"], fed["call_id"]) == ("unknown", call_id)
    for text in (fed["message"], str(told.value)):
        assert "whether it took effect is not known" in text, text
        assert "approval" not in text and "not run" not in text, text
    assert ToolCall.objects.count() == 1


def test_a_rejection_reaches_the_model_with_the_reason(live_world: World, live_server: Any) -> None:
    model = ScriptedModel(
        [
            [tool_call("send_email", EMAIL)],
            lambda messages: final(
                "Told the user: " + json.loads(messages[-1]["content"])["reason"]
            ),
        ]
    )
    with (
        reviewing(live_world.bob, lambda call: ("reject", "Wrong customer.")),
        client(live_world, live_server) as cs,
    ):
        transcript = run_agent(cs, model, session_id="h-2")
    assert transcript.answer == "Told the user: Wrong customer."
    assert transcript.fed_back[0]["error"] == "call_rejected"


def test_invalid_arguments_are_fed_back_with_the_suggestion(
    live_world: World, live_server: Any
) -> None:
    def corrected(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        error = json.loads(messages[-1]["content"])
        assert error["error"] == "invalid_arguments" and error["suggestion"]
        assert {d["path"] for d in error["details"]} == {"$.to"}
        return [tool_call("search_docs", {"query": "refund"})]

    model = ScriptedModel(
        [
            [tool_call("send_email", {**EMAIL, "to": "not an address"})],
            corrected,
            final("done"),
        ]
    )
    with client(live_world, live_server) as cs:
        transcript = run_agent(cs, model, session_id="h-3")
    assert transcript.outcome == "answered"
    assert transcript.tool_results()[1]["result"]["count"] >= 1
    assert not ToolCall.objects.filter(tool__name="send_email").exists()


def test_a_tool_refusal_is_fed_back_with_its_code_and_not_retried(
    live_world: World, live_server: Any
) -> None:
    model = ScriptedModel([[tool_call("get_customer", {"customer_id": "cus_9999"})], final("no")])
    with client(live_world, live_server) as cs:
        transcript = run_agent(cs, model, session_id="h-4")
    [fed] = transcript.fed_back
    assert (fed["error"], fed["tool_code"], fed["retryable"]) == (
        "tool_failed",
        "customer_not_found",
        False,
    )
    assert ToolCall.objects.filter(tool__name="get_customer").count() == 1, "asked once"


def test_rate_limits_and_the_rounds_limit(live_world: World, live_server: Any) -> None:
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="1/minute")
    live_world.agent.max_rounds_per_session = 3
    live_world.agent.save()
    model = ScriptedModel(
        [
            [tool_call("send_email", EMAIL, id="a"), tool_call("send_email", EMAIL, id="b")],
            [tool_call("search_docs", {"query": "refund"})],
            [tool_call("search_docs", {"query": "refund"})],
            [tool_call("search_docs", {"query": "refund"})],
        ]
    )
    with client(live_world, live_server) as cs:
        transcript = run_agent(cs, model, session_id="h-5", wait_timeout=0.5)
    pending, limited, read, _, over = transcript.fed_back
    assert pending["status"] == "pending"
    assert limited["error"] == "rate_limited" and limited["retry_after"] >= 1
    assert read["result"]["count"] >= 1
    assert over["error"] == "max_rounds_exceeded"
    assert transcript.outcome == "max_rounds"


class Crash(Exception):
    pass


def test_a_crashed_loop_rerun_gets_the_same_call(
    live_world: World, live_server: Any, tmp_path: Path
) -> None:
    def script() -> ScriptedModel:
        return ScriptedModel([[tool_call("send_email", EMAIL, id="call_mail")], final("done")])

    def crash_after_submit(response: httpx.Response) -> None:
        if response.request.method == "POST":
            raise Crash("the agent died with the answer on the wire")

    crashing = Countersign(
        live_server.url,
        live_world.token,
        state=tmp_path,
        event_hooks={"response": [crash_after_submit]},
    )
    with crashing, pytest.raises(Crash):
        run_agent(crashing, script(), session_id="h-6")
    [call] = ToolCall.objects.all()
    with (
        reviewing(live_world.bob),
        Countersign(live_server.url, live_world.token, state=tmp_path) as cs,
    ):
        transcript = run_agent(cs, script(), session_id="h-6")
    assert transcript.tool_results()[0]["result"]["status"] == "sent"
    assert list(ToolCall.objects.values_list("pk", flat=True)) == [call.pk]
