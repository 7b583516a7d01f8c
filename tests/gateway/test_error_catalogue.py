"""Every error code the agent API can answer with is documented for agents: in docs/api.md's
table, or (the endings of a call waited for over MCP) in docs/mcp.md."""

from __future__ import annotations

import re

from tests.support import ROOT


def test_every_error_code_is_documented() -> None:
    source = (ROOT / "gateway" / "errors.py").read_text()
    codes = set(re.findall(r'\bcode="([a-z_]+)"', source))
    assert {"not_authenticated", "agent_stopped", "tool_not_allowed_for_user"} <= codes
    pages = (ROOT / "docs" / "api.md").read_text() + (ROOT / "docs" / "mcp.md").read_text()
    missing = sorted(code for code in codes if f"`{code}`" not in pages)
    assert missing == [], f"document these error codes in docs/api.md: {missing}"
