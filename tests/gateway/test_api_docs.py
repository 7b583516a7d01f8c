"""The OpenAPI schema and the interactive docs, served without a CDN (the CSP forbids one)."""

from __future__ import annotations

import re

from django.test import Client


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
