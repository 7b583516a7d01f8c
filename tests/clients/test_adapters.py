"""The LangChain and OpenAI Agents SDK adapters, with the frameworks' real tool objects,
against a live Countersign: a read, an approved write waited for and returned, and a
rejection returned with the reviewer's reason; and LangGraph's prebuilt agent running the
LangChain tools. The frameworks need the mcp 1.x SDK, so they
run from their own virtual environment (``make test`` builds ``.venv-agent-clients`` with
``./clients/python[langchain,openai-agents]``), as their users would run them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from countersign_client import Countersign, MemoryState
from countersign_client.integrations._common import call_sync

from approvals.models import ToolCall
from tests.conftest import World
from tests.support import ROOT
from tests.support.reviewer import reviewing

pytestmark = pytest.mark.django_db(transaction=True)

PYTHON = ROOT / ".venv-agent-clients" / "bin" / "python"
APPROVED = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}
PROBE = Path(__file__).parent / "adapters_probe.py"


def reject_the_marked(call: ToolCall) -> tuple[str, str]:
    if call.arguments.get("subject") == "reject me":
        return "reject", "Not this one."
    return "approve", "Fine."


def probe(which: str, world: World, server: Any) -> dict[str, Any]:
    if not PYTHON.exists():
        raise AssertionError(f"{PYTHON} is missing: make .venv-agent-clients/.installed")
    with reviewing(world.bob, reject_the_marked):
        done = subprocess.run(
            [str(PYTHON), str(PROBE), which, server.url, world.token],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_langchain_structured_tools(live_world: World, live_server: Any) -> None:
    seen = probe("langchain", live_world, live_server)
    assert seen["structured"] is True
    assert seen["read"]["count"] >= 1
    assert seen["approved"]["status"] == "sent"
    status, content = seen["rejected"]
    assert status == "error" and "Not this one." in content
    assert seen["steps"] == ["#1", "lc-call-1", "lc-call-2"], "the tool-call ids are the steps"
    assert set(seen["schema"]) == {"to", "subject", "body"}


def test_langgraph_prebuilt_agent_runs_the_tools_and_a_rerun_makes_no_new_call(
    live_world: World, live_server: Any
) -> None:
    seen = probe("langgraph", live_world, live_server)
    first = {a["id"]: a for a in seen["first"] if "id" in a}
    assert sorted(first) == ["lg-call-1", "lg-call-2", "lg-call-3"]
    assert first["lg-call-1"]["status"] == "success"
    assert json.loads(first["lg-call-1"]["content"])["count"] >= 1
    assert first["lg-call-2"]["status"] == "success"
    assert json.loads(first["lg-call-2"]["content"])["status"] == "sent"
    # The rejection is the tool's answer, which the agent's loop reads on: not a crash.
    assert first["lg-call-3"]["status"] == "error"
    assert "Not this one." in first["lg-call-3"]["content"]
    assert seen["first"][-1] == {"final": "Done."}
    assert first["lg-call-1"]["steps"] == ["lg-call-1", "lg-call-2", "lg-call-3"]
    # The rerun (the same tool-call ids, the same state) gets the same answers, no new call.
    assert seen["again"] == seen["first"]
    calls = ToolCall.objects.values_list("tool__name", "status")
    assert sorted(calls) == [
        ("search_docs", "succeeded"),
        ("send_email", "rejected"),
        ("send_email", "succeeded"),
    ]


def test_openai_agents_function_tools(live_world: World, live_server: Any) -> None:
    seen = probe("openai_agents", live_world, live_server)
    assert seen["function_tools"] and seen["strict"]
    assert seen["unchanged"] and seen["fixed_point"]
    assert sorted(seen["update_changes_required"]) == ["email", "name", "phone", "plan"]
    assert seen["read"]["count"] >= 1
    assert seen["approved"]["status"] == "sent"
    assert "Not this one." in seen["rejected"]
    assert seen["steps"] == ["oa-call-0", "oa-call-1", "oa-call-2"]
    # Strict mode's nulls were dropped: the write is the call the model meant.
    assert ToolCall.objects.filter(tool__name="search_docs").get().arguments == {"query": "refund"}


def test_a_call_a_reviewer_corrected_tells_the_model_what_ran(
    live_world: World, live_server: Any
) -> None:
    """The adapters' answer was the result alone, as MCP's was: the model told its user
    the e-mail it asked for went out when a corrected one had."""
    corrected = {**APPROVED, "to": "grace@example.com"}
    with (
        reviewing(live_world.bob, correct=lambda call: corrected),
        Countersign(live_server.url, live_world.token, state=MemoryState()) as cs,
    ):
        text = call_sync(cs, "send_email", APPROVED, "call-1", session_id="edit-1")
    assert '"status": "sent"' in text
    assert "corrected" in text and "grace@example.com" in text, text
