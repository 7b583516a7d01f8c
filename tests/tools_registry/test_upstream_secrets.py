"""An upstream's header values are secrets: a canary token set in the admin never appears
in the database in clear, the audit trail, its exports, the admin's pages, the logs, or an
error message, through registering, importing, calling and failing."""

from __future__ import annotations

import json
import logging
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from approvals.models import ToolCall
from audit import chain
from audit.models import AuditEvent
from tests.audit.conftest import make_auditor
from tests.conftest import World
from tests.support.upstreams import UPSTREAM_TOKEN, control
from tests.support.upstreams.raw_http import RawHttpServer
from tests.support.upstreams.raw_http import reply as raw_reply
from tests.support.upstreams.raw_mcp import RawMcpServer
from tests.support.web import WebProcess
from tools_registry.models import Tool, Upstream
from tools_registry.upstreams import secrets

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]

CANARY = UPSTREAM_TOKEN


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    # The loggers the settings quiet too (the HTTP client's request lines, SQL): whatever a
    # deployment sets them to, the canary must not be in them.
    for quieted in ("httpx", "httpcore", "django.db.backends"):
        caplog.set_level(logging.DEBUG, logger=quieted)
    return caplog


def test_the_canary_goes_nowhere_but_the_upstream(
    world: World,
    http_upstream: WebProcess,
    admin_client: Client,
    everything_logged: pytest.LogCaptureFixture,
    settings: Any,
) -> None:
    settings.DEBUG = True  # SQL statements are logged too
    added = admin_client.post(
        "/admin/tools_registry/upstream/add/",
        {
            "name": "orders",
            "kind": "openapi",
            "url": f"{http_upstream.url}/openapi.json",
            "base_url": "",
            "timeout_seconds": "10",
            "idempotency_header": "Idempotency-Key",
            "enabled": "on",
            "headers": f"Authorization: Bearer {CANARY}\nX-Trace: visible-to-upstream",
        },
        follow=True,
    )
    assert added.status_code == 200
    upstream = Upstream.objects.get(name="orders")
    assert upstream.header_names == ["Authorization", "X-Trace"]
    assert secrets.decrypt(upstream.headers_encrypted)[0] == ("Authorization", f"Bearer {CANARY}")
    tools = list(Tool.objects.filter(upstream=upstream))
    assert len(tools) == 6, "imported with the decrypted headers"

    # A call that works, one the upstream refuses, and a sync that fails on a wrong header.
    Tool.objects.filter(upstream=upstream).update(enabled=True)
    world.agent.allowed_tools.add(*tools)
    found = world.api().submit(
        {"tool": "orders__get_order", "arguments": {"order_id": "nope"}, "session_id": "s"}
    )
    assert found.status_code == 422, "the upstream's 404 is its answer, not a passing failure"
    call_command("sync_upstreams", "orders", stdout=StringIO())

    pages = [
        admin_client.get("/admin/tools_registry/upstream/").content,
        admin_client.get(f"/admin/tools_registry/upstream/{upstream.pk}/change/").content,
        admin_client.get(f"/admin/tools_registry/tool/{tools[0].pk}/change/").content,
    ]
    assert b"Authorization: \xe2\x80\xa2" in pages[1], "the header's name, its value hidden"
    chain.seal_and_anchor()
    auditor = Client()
    auditor.force_login(make_auditor())
    exports = [auditor.get(f"/audit/export.{fmt}").getvalue() for fmt in ("csv", "jsonl")]
    trail = json.dumps(list(AuditEvent.objects.values("data", "actor_label", "tool_name")))
    with connection.cursor() as cursor:
        cursor.execute("SELECT headers_encrypted, header_names::text FROM tools_registry_upstream")
        stored = json.dumps(cursor.fetchall())
    logs = everything_logged.text
    errors = json.dumps(list(Tool.objects.values_list("name", flat=True)))

    for where, text in {
        "database": stored,
        "audit trail": trail,
        "exports": b"".join(exports).decode(),
        "admin pages": b"".join(pages).decode(),
        "logs": logs,
        "call errors": found.content.decode() + errors,
    }.items():
        assert CANARY not in text, f"the canary leaked into the {where}"
    assert "orders__get_order" in logs or "orders" in logs, "the logs were captured"


def test_a_wrong_header_fails_the_import_without_quoting_it(
    world: World, http_upstream: WebProcess
) -> None:
    err = StringIO()
    with pytest.raises(Exception) as failed:
        call_command(
            "add_upstream", "orders", "--openapi", f"{http_upstream.url}/openapi.json",
            "--header", f"Authorization: Bearer wrong-{CANARY}", stderr=err, stdout=StringIO(),
        )  # fmt: skip
    assert "HTTP 401" in str(failed.value)
    assert CANARY not in str(failed.value) + err.getvalue()
    failure = AuditEvent.objects.get(action="upstream.sync_failed")
    assert CANARY not in json.dumps(failure.data)


def _imported(world: World, name: str, kind: str, url: str) -> None:
    call_command(
        "add_upstream", name, f"--{kind}", url, "--header", f"Authorization: Bearer {CANARY}",
        "--enable", "--allow", world.agent.name, stdout=StringIO(), stderr=StringIO(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "tool", "echo"),
    [
        ("openapi", "orders__read_note", "json"),
        ("openapi", "orders__read_note", "text"),
        ("mcp", "notes__list_notes", True),
    ],
)
def test_an_answer_that_quotes_the_credential_reaches_the_agent_without_it(
    world: World, http_upstream: WebProcess, mcp_upstream: WebProcess, kind: str, tool: str,
    echo: Any,
) -> None:  # fmt: skip
    """An echo endpoint, a debug field: a 2xx answer (an MCP result) is the call's result,
    and the agent never holds the upstream's credential."""
    if kind == "openapi":
        _imported(world, "orders", kind, f"{http_upstream.url}/openapi.json")
        control(http_upstream, echo=echo)
    else:
        _imported(world, "notes", kind, f"{mcp_upstream.url}/mcp")
        control(mcp_upstream, echo=echo)

    answered = world.api().submit({"tool": tool, "arguments": {}, "session_id": "s"})
    assert answered.status_code == 200, answered.content
    assert "[credential]" in json.dumps(answered.json()["result"]), "the answer, scrubbed"
    status = world.api().get(f"/api/v1/tool-calls/{answered.json()['id']}")
    chain.seal_and_anchor()
    for where, text in {
        "answer": answered.content.decode(),
        "status": status.content.decode(),
        "call": json.dumps(list(ToolCall.objects.values_list("result", flat=True))),
        "audit trail": json.dumps(list(AuditEvent.objects.values_list("data", flat=True))),
    }.items():
        assert CANARY not in text, f"the canary leaked into the {where}"


@pytest.mark.parametrize("kind", ["openapi", "mcp"])
def test_a_definition_that_quotes_the_credential_is_imported_without_it(
    world: World, kind: str
) -> None:
    """A document served to whoever is signed in may quote their key back (personalised API
    docs fill it in as an example, a server's listing as what it is signed in with): the
    tools' definitions are the agent's to read (``/api/v1/tools``), stored, audited and
    exported, and the agent never holds the upstream's credential."""
    quoting = f"Signed in with Bearer {CANARY}."
    listed = {
        "name": "find",
        "description": quoting,
        "inputSchema": {
            "type": "object",
            "properties": {"q": {"type": "string", "examples": [CANARY]}},
        },
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": "x", "version": "1"},
        "paths": {
            "/find": {
                "get": {
                    "operationId": "find",
                    "description": quoting,
                    "parameters": [
                        {"name": "q", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "key",
                            "in": "query",
                            "example": CANARY,
                            "schema": {"type": "string", "default": CANARY},
                        },
                    ],
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }
    if kind == "mcp":
        server: Any = RawMcpServer(lambda handler, message: None, tools=[listed])
        url = server.url
    else:
        server = RawHttpServer(lambda handler, _: raw_reply(handler, 200, document), gets=True)
        document["servers"] = [{"url": server.url}]
        url = f"{server.url}/openapi.json"
    try:
        _imported(world, "docs", kind, url)
    finally:
        server.close()
    tool = Tool.objects.get(name="docs__find")
    assert tool.description == "Signed in with [credential]."
    listed_tools = world.api().get("/api/v1/tools")
    assert listed_tools.status_code == 200 and "docs__find" in listed_tools.content.decode()
    chain.seal_and_anchor()
    auditor = Client()
    auditor.force_login(make_auditor())
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(t)::text FROM tools_registry_tool t")
        stored = json.dumps(cursor.fetchall())
    for where, text in {
        "tools listed to the agent": listed_tools.content.decode(),
        "database": stored,
        "exports": auditor.get("/audit/export.jsonl").getvalue().decode(),
    }.items():
        assert CANARY not in text, f"the canary leaked into the {where}"
