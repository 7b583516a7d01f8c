"""The OpenAPI schema and the interactive docs, served without a CDN (the CSP forbids one)."""

from __future__ import annotations

import json
import re
from typing import Any

from django.test import Client

from tests.conftest import World
from tools_registry import services as registry_services
from tools_registry.models import Agent


def test_the_openapi_schema_lists_every_endpoint(db: None) -> None:
    schema = Client().get("/api/v1/openapi.json").json()
    assert set(schema["paths"]) >= {
        "/api/v1/tools",
        "/api/v1/tool-calls",
        "/api/v1/tool-calls/{call_id}",
        "/api/v1/tool-calls/{call_id}/cancel",
        "/api/v1/tool-calls/{call_id}/retry",
    }
    submit = schema["paths"]["/api/v1/tool-calls"]["post"]
    assert {"200", "202", "409", "422", "429", "503", "504"} <= set(submit["responses"])
    headers = {p["name"] for p in submit["parameters"] if p["in"] == "header"}
    assert "Idempotency-Key" in headers
    wait = schema["paths"]["/api/v1/tool-calls/{call_id}"]["get"]["parameters"]
    assert {"wait", "seen"} <= {p["name"] for p in wait}


def test_the_docs_page_loads_its_scripts_from_this_site(db: None) -> None:
    response = Client().get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    sources = re.findall(r'<script[^>]*src="([^"]+)"', html)
    assert sources and all(src.startswith("/static/") for src in sources), sources
    assert "cdn" not in html.lower()
    for src in sources:
        assert Client().get(src).status_code == 200


def test_the_document_and_its_page_answer_only_get_and_head(db: None) -> None:
    """ninja served them to any method: a POST or DELETE got the document, 200, where the
    API answers a method an endpoint does not take with 405, Allow and the error body."""
    for path in ("/api/v1/openapi.json", "/api/v1/docs"):
        assert Client().head(path).status_code == 200
        for method in ("post", "put", "patch", "delete"):
            response = getattr(Client(), method)(path)
            assert response.status_code == 405, (method, path, response.status_code)
            assert response["Allow"] == "GET, HEAD"
            assert response.json()["error"]["code"] == "method_not_allowed"


def submit_body(document: dict[str, Any]) -> dict[str, Any]:
    body = document["paths"]["/api/v1/tool-calls"]["post"]["requestBody"]
    return body["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def test_without_a_token_the_document_lists_no_tool(world: World) -> None:
    """The document is public; the tools' schemas say what an agent could do."""
    for headers in ({}, {"Authorization": "Bearer cst_unknown_token"}):
        document = Client().get("/api/v1/openapi.json", headers=headers).json()
        assert submit_body(document) == {"$ref": "#/components/schemas/ToolCallIn"}
        arguments = document["components"]["schemas"]["ToolCallIn"]["properties"]["arguments"]
        assert arguments["type"] == "object" and "properties" not in arguments
        assert not [n for n in document["components"]["schemas"] if n.startswith("ToolCall.")]
        # (The examples name demo tools; no tool of the registry is described.)
        text = json.dumps(document, ensure_ascii=False)
        for tool in world.tools.values():
            assert tool.description not in text, f"{tool.name} is described"
            fields = tool.input_schema["properties"].values()
            described = [f["description"] for f in fields if "description" in f]
            assert not [d for d in described if d in text], f"{tool.name}'s arguments"


def test_with_a_token_the_document_lists_that_agents_tools(world: World) -> None:
    other = Agent.objects.create(name="docs-bot", owner=world.alice)
    other.allowed_tools.add(world.tools["search_docs"], world.tools["send_email"])
    _, other_token = registry_services.issue_token(agent=other, label="tests")
    for token, expected in (
        (world.token, set(world.tools)),
        (other_token, {"search_docs", "send_email"}),
    ):
        headers = {"Authorization": f"Bearer {token}"}
        document = Client().get("/api/v1/openapi.json", headers=headers).json()
        schema = submit_body(document)
        assert set(schema["discriminator"]["mapping"]) == expected
        variants = {n for n in document["components"]["schemas"] if n.startswith("ToolCall.")}
        assert variants == {f"ToolCall.{name}" for name in expected}
    send_email = document["components"]["schemas"]["ToolCall.send_email"]
    assert send_email["properties"]["arguments"]["required"] == ["to", "subject", "body"]


def test_a_stopped_agents_token_gets_the_document_without_its_tools(world: World) -> None:
    """A stopped agent neither acts nor reads until it is resumed: its tools' schemas
    included."""
    registry_services.stop_agent(agent=world.agent, reason="incident 7")
    headers = {"Authorization": f"Bearer {world.token}"}
    document = Client().get("/api/v1/openapi.json", headers=headers).json()
    assert not [n for n in document["components"]["schemas"] if n.startswith("ToolCall.")]
    registry_services.resume_agent(agent=world.agent, note="fixed")
    document = Client().get("/api/v1/openapi.json", headers=headers).json()
    assert [n for n in document["components"]["schemas"] if n.startswith("ToolCall.")]
