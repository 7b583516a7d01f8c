"""The LangChain and OpenAI Agents SDK adapters, with the frameworks' real tool objects,
against a live Countersign: a read, an approved write waited for and returned, and a
rejection returned with the reviewer's reason. The frameworks need the mcp 1.x SDK, so they
run from their own virtual environment (``make test`` builds ``.venv-agent-clients`` with
``./clients/python[langchain,openai-agents]``), as their users would run them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from approvals.models import ToolCall
from tests.conftest import World
from tests.support import ROOT
from tests.support.reviewer import reviewing

pytestmark = pytest.mark.django_db(transaction=True)

PYTHON = ROOT / ".venv-agent-clients" / "bin" / "python"
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
