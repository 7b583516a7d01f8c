"""The OpenAPI document is a contract a generator can trust: every $ref resolves, and
schemathesis, with every check it has, finds nothing against a live Countersign (uvicorn,
as deployed) with a real agent token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import World
from tests.support.web import running_web

pytestmark = pytest.mark.django_db(transaction=True)

# 422 is a well-formed request the server answers with a documented refusal that depends on
# state no schema can express: a tool that says "no such customer" (tool_failed), a key
# already used with another body. Everything else positive must be accepted as schemathesis
# defaults say. NUL cannot be stored by PostgreSQL; the API refuses it in every string, as
# its description says. A long-poll may take its whole wait (at most 60 s).
CONFIG = """
[generation]
allow-x00 = false

[checks]
# A long-poll (GET ...?wait=N) answers after up to 60 s by design.
max_response_time = 65

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "503", "504", "502"]
"""


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


def test_every_ref_resolves(live_world: World, tmp_path: Path) -> None:
    """With the agent's token (its tools spelled out) and without (the generic call)."""
    with running_web(tmp_path=tmp_path) as web:
        for headers in ({}, {"Authorization": f"Bearer {live_world.token}"}):
            doc = httpx.get(f"{web.url}/api/v1/openapi.json", headers=headers).json()
            resolver = (
                Registry()
                .with_resource("urn:doc", Resource(contents=doc, specification=DRAFT202012))
                .resolver(base_uri="urn:doc")
            )
            found = refs(doc)
            assert found
            for ref in found:
                resolver.lookup(ref)  # raises PointerToNowhere for a dangling one
            body = doc["paths"]["/api/v1/tool-calls"]["post"]["requestBody"]
            schema = body["content"]["application/json"]["schema"]
            if headers:
                assert schema["discriminator"]["propertyName"] == "tool"
                assert sorted(schema["discriminator"]["mapping"]) == sorted(live_world.tools)
            else:
                assert schema == {"$ref": "#/components/schemas/ToolCallIn"}
            assert doc["servers"] == [{"url": web.url, "description": "This Countersign"}]


def test_schemathesis_finds_nothing(live_world: World, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with running_web(tmp_path=tmp_path) as web:
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "--config-file", str(config),
                "run", f"{web.url}/api/v1/openapi.json",
                "--header", f"Authorization: Bearer {live_world.token}",
                "--checks", "all",
                "--max-examples", "15",
                "--seed", "13",
                "--workers", "2",  # a long-poll holding up to 60 s waits beside the rest
                "--phases", "examples,coverage,fuzzing",
                "--request-timeout", "75",  # a long-poll may hold 60 s
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,  # its cache (.schemathesis/) stays out of the repository
            timeout=900,
            check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
