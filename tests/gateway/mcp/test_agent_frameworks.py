"""The MCP clients of the agent frameworks people run, against a real Countersign: the
OpenAI Agents SDK (``MCPServerStreamableHttp``) and LangChain's ``langchain-mcp-adapters``
(the tools LangGraph's prebuilt agents take). They need the mcp 1.x SDK, so they run from
their own virtual environment (``make test`` builds ``.venv-agent-clients``), as their
users would run them. No model is needed: only their MCP clients are under test."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from approvals.models import ToolCall
from tests.conftest import World
from tests.support import ROOT
from tests.support.web import WebProcess

pytestmark = pytest.mark.django_db(transaction=True)

PYTHON = ROOT / ".venv-agent-clients" / "bin" / "python"
PROBES = Path(__file__).parent / "agent_clients"
DEMO_TOOLS = [
    "countersign_wait",
    "delete_customer",
    "get_customer",
    "issue_refund",
    "search_docs",
    "send_email",
    "update_customer",
]


def probe(script: str, web: WebProcess, token: str) -> dict[str, Any]:
    if not PYTHON.exists():
        raise AssertionError(
            f"{PYTHON} is missing: `make test` creates it (make .venv-agent-clients/.installed)"
        )
    done = subprocess.run(
        [str(PYTHON), str(PROBES / script), f"{web.url}/mcp", token],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_openai_agents_sdk_lists_the_tools_and_runs_a_read(
    live_world: World, mcp_web: WebProcess
) -> None:
    seen = probe("openai_agents_probe.py", mcp_web, live_world.token)
    assert seen["tools"] == DEMO_TOOLS
    assert seen["annotations"]["update_customer"]["destructiveHint"] is True
    assert seen["annotations"]["search_docs"]["readOnlyHint"] is True
    assert seen["is_error"] is False
    assert seen["structured"]["count"] == 1
    assert seen["structured"]["articles"][0]["slug"] == "refund-policy"


def test_langchain_mcp_adapters_load_the_tools_and_invoke_a_read(
    live_world: World, mcp_web: WebProcess
) -> None:
    seen = probe("langchain_probe.py", mcp_web, live_world.token)
    assert seen["tools"] == DEMO_TOOLS
    assert seen["schema"]["required"] == ["to", "subject", "body"]
    assert "Grace Hopper" in seen["answer"]
    assert "invalid_arguments" in seen["refused"] and "$.to" in seen["refused"]
    # The same write, invoked twice: each in a new MCP session, and still one call (the
    # pending answer names it) where it was two to approve.
    first, again = (re.search(r"The call ([0-9a-f-]{36})", text) for text in seen["pending"])
    assert first is not None and again is not None, seen["pending"]
    assert first[1] == again[1]
    assert ToolCall.objects.filter(tool__name="send_email").count() == 1
