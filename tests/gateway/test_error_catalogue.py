"""Every error code the agent API can answer with is documented for agents: in docs/api.md's
table, or (the endings of a call waited for over MCP) in docs/mcp.md; and the table names no
code the API cannot answer with."""

from __future__ import annotations

import re

from approvals.guards import CANNOT_RUN
from gateway.openapi import OPERATION_ERRORS, SUBMIT
from tests.support import ROOT


def answered_codes() -> set[str]:
    """The codes of errors.py's factories, and those of a read refused at its claim, which
    ``errors.cannot_run`` answers with the claim's own code (``CANNOT_RUN``)."""
    source = (ROOT / "gateway" / "errors.py").read_text()
    return set(re.findall(r'\bcode="([a-z_]+)"', source)) | set(CANNOT_RUN)


def test_every_error_code_is_documented() -> None:
    codes = answered_codes()
    assert {"not_authenticated", "agent_stopped", "tool_not_allowed_for_user"} <= codes
    pages = (ROOT / "docs" / "api.md").read_text() + (ROOT / "docs" / "mcp.md").read_text()
    missing = sorted(code for code in codes if f"`{code}`" not in pages)
    assert missing == [], f"document these error codes in docs/api.md: {missing}"


def test_the_error_table_names_only_codes_the_api_answers_with() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    table = page[page.index("## Errors") :].split("\n## ", 1)[0]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ")]
    listed = {code for row in rows[1:] for code in re.findall(r"`([a-z_]+)`", row[2])}
    assert "agent_stopped" in listed
    assert sorted(listed - answered_codes()) == []


def test_the_openapi_document_lists_every_refusal_of_a_read_at_its_claim() -> None:
    """A read refused between intake and running it answers the submission with the
    claim's code (gateway.responses.failure)."""
    submit = {code for codes in OPERATION_ERRORS[SUBMIT].values() for code in codes}
    assert sorted(set(CANNOT_RUN) - submit) == []
