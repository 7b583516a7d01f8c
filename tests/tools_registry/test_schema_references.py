"""A tool's schema is read as it stands: a ``$ref`` to a URL or a file (an upstream wrote
the schema) is never fetched, at import or when a call is checked, and such a schema is
not imported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from tests.conftest import World
from tests.support.upstreams.raw_http import RawHttpServer, reply
from tools_registry.models import Tool, Upstream
from tools_registry.schemas import schema_problems, validate_arguments
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams import mcp as upstream_mcp
from tools_registry.upstreams import openapi as upstream_openapi
from tools_registry.upstreams.offers import ImportFailed

SECRET = {"type": "string", "enum": ["AKIA-INTERNAL-SECRET-123"]}


class Internal(RawHttpServer):
    """A service on the internal network (think 169.254.169.254) no admin named: answers
    every GET with ``answer`` and keeps the paths asked for in ``hits``."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.hits: list[str] = []
        super().__init__(lambda handler, _: self._hit(handler, answer), gets=True)

    def _hit(self, handler: Any, answer: dict[str, Any]) -> None:
        self.hits.append(handler.path)
        reply(handler, 200, answer)


@pytest.fixture
def internal() -> Any:
    server = Internal(SECRET)
    yield server
    server.close()


def document(ref: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "servers": [{"url": "https://api.example"}],
        "paths": {
            "/things": {
                "get": {
                    "operationId": "list_things",
                    "parameters": [{"name": "q", "in": "query", "schema": {"$ref": ref}}],
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }


def test_an_openapi_document_referring_to_a_url_is_refused_unfetched(internal: Internal) -> None:
    body = json.dumps(document(f"{internal.url}/latest/meta-data/iam")).encode()
    with pytest.raises(ImportFailed, match="refers outside itself"):
        upstream_openapi.parse(body)
    with pytest.raises(ImportFailed, match="cannot be resolved"):
        upstream_openapi.offer(
            document(f"{internal.url}/latest/meta-data/iam"),
            upstream="up",
            document_url="https://api.example/o.json",
            base_url="",
        )
    assert internal.hits == []


def test_an_openapi_document_referring_to_a_file_is_refused_unread(tmp_path: Path) -> None:
    secret = tmp_path / "service-account.json"
    secret.write_text(json.dumps(SECRET))
    with pytest.raises(ImportFailed, match="refers outside itself") as refused:
        upstream_openapi.parse(json.dumps(document(f"file://{secret}")).encode())
    assert "AKIA" not in str(refused.value)
    with pytest.raises(ImportFailed) as refused:
        upstream_openapi.offer(
            document(f"file://{secret}"),
            upstream="up",
            document_url="https://api.example/o.json",
            base_url="",
        )
    assert "AKIA" not in str(refused.value)
    # References within the document are followed as before.
    local = document("#/components/schemas/Q")
    local["components"] = {"schemas": {"Q": {"type": "string"}}}
    offered = upstream_openapi.offer(
        upstream_openapi.parse(json.dumps(local).encode()),
        upstream="up",
        document_url="https://api.example/o.json",
        base_url="",
    )
    assert offered.tools[0].input_schema["properties"]["q"] == {"type": "string"}


def test_an_mcp_tool_whose_schema_refers_outside_it_is_not_imported(
    world: World, internal: Internal
) -> None:
    upstream = register_upstream(name="rmt", kind=Upstream.Kind.MCP, url="http://mcp.invalid/mcp")
    listed = [
        types.Tool(
            name="lookup",
            input_schema={
                "type": "object",
                "properties": {"q": {"$ref": f"{internal.url}/computeMetadata/v1/"}},
            },
            annotations=types.ToolAnnotations(read_only_hint=False),
        )
    ]
    report = sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: upstream_mcp.offer_from(u.name, listed),
    )
    assert report.imported == []
    assert any("only references within the schema" in skipped for skipped in report.skipped)
    assert not Tool.objects.filter(name="rmt__lookup").exists()
    assert internal.hits == []


def test_checking_arguments_never_fetches_what_a_stored_schema_refers_to(
    world: World, internal: Internal, tmp_path: Path
) -> None:
    """A tool stored before such schemas were refused: its calls are refused with a reason,
    nothing is fetched or read, and nothing of a file reaches the agent."""
    secret = tmp_path / "key.json"
    secret.write_text(json.dumps(SECRET))
    for ref in (f"{internal.url}/computeMetadata/v1/", f"file://{secret}"):
        schema = {"type": "object", "properties": {"q": {"$ref": ref}}}
        assert schema_problems(schema)
        problems = validate_arguments(schema, {"q": "guess"})
        assert [p.validator for p in problems] == ["$ref"]
        assert not any("AKIA" in p.message for p in problems)
    assert internal.hits == []
    tool = world.tools["send_email"]
    Tool.objects.filter(pk=tool.pk).update(
        input_schema={
            "type": "object",
            "properties": {"to": {"$ref": f"{internal.url}/computeMetadata/v1/"}},
        }
    )
    refused = world.api().submit(
        {"tool": "send_email", "arguments": {"to": "a@example.com"}, "session_id": "s"}
    )
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["code"] == "invalid_arguments"
    assert internal.hits == []


def test_an_output_schema_referring_outside_it_is_not_published(world: World) -> None:
    """Stored before such schemas were refused: MCP clients would have to fetch it, and
    Countersign's own check of a read's result against it would fail."""
    from tools_registry.exports import mcp_tool

    tool = world.tools["get_customer"]
    Tool.objects.filter(pk=tool.pk).update(
        output_schema={"type": "object", "properties": {"a": {"$ref": "https://x.example/s"}}}
    )
    tool.refresh_from_db()
    assert mcp_tool(tool).output_schema is None
    Tool.objects.filter(pk=tool.pk).update(output_schema={"type": "object"})
    tool.refresh_from_db()
    assert mcp_tool(tool).output_schema == {"type": "object"}
