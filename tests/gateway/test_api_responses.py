"""Real answers fit the OpenAPI document the server serves, in the states schemathesis
cannot reach by fuzzing (tests/gateway/test_api_contract.py): a read that succeeded, was
refused, failed or timed out; a write pending, replayed, approved, run, rejected, expired,
cancelled, failed and retried, of unknown outcome; refusals of the call endpoints. Each
answer's status is one its operation documents, its body validates against that status's
schema (the error code within the documented ones), and its required headers are there."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from django.test import Client
from django.utils import timezone
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from approvals.execution import runner
from approvals.execution.claim import claim_call
from approvals.execution.finish import expire_lease
from approvals.models import ToolCall
from approvals.services.calls import expire_call
from approvals.services.decisions import decide
from tests.conftest import World
from tests.gateway.conftest import GET_CUSTOMER, SEND_EMAIL
from tests.support.probe import install_probe_tool

SUBMIT = ("/api/v1/tool-calls", "post")
GET = ("/api/v1/tool-calls/{call_id}", "get")
CANCEL = ("/api/v1/tool-calls/{call_id}/cancel", "post")
RETRY = ("/api/v1/tool-calls/{call_id}/retry", "post")
UPDATE_MISSING = {
    "tool": "update_customer",
    "arguments": {"customer_id": "cus_0099", "changes": {"plan": "pro"}},
    "session_id": "run-1",
}


class Contract:
    """The served document (fetched with the agent's token), and what it finds wrong with
    each answer checked against it."""

    def __init__(self, world: World):
        self.world = world
        self.auth = {"HTTP_AUTHORIZATION": f"Bearer {world.token}"}
        self.doc = Client().get("/api/v1/openapi.json", **self.auth).json()
        resource = Resource(contents=self.doc, specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:doc", resource)
        self.problems: list[str] = []

    def check(self, operation: tuple[str, str], response: Any, what: str) -> Any:
        path, method = operation
        status = str(response.status_code)
        documented = self.doc["paths"][path][method]["responses"]
        if status not in documented:
            self.problems.append(f"{what}: {status} is not documented for {method} {path}")
            return response
        for name, header in documented[status].get("headers", {}).items():
            if header.get("required") and name not in response:
                self.problems.append(f"{what}: {status} without its {name} header")
        pointer = "/".join(
            ["urn:doc#", "paths", path.replace("/", "~1"), method, "responses", status,
             "content", "application~1json", "schema"]
        )  # fmt: skip
        validator = Draft202012Validator(
            {"$ref": pointer},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        for error in validator.iter_errors(response.json()):
            where = "/".join(str(p) for p in error.absolute_path)
            self.problems.append(f"{what}: {status} body at /{where}: {error.message[:200]}")
        return response

    def submit(self, body: Any, what: str, *, key: str | None = None) -> Any:
        response = Client().post(
            "/api/v1/tool-calls",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY=key or str(uuid.uuid4()),
            **self.auth,
        )
        return self.check(SUBMIT, response, what)

    def get(self, call_id: str, what: str, query: str = "") -> Any:
        response = Client().get(f"/api/v1/tool-calls/{call_id}{query}", **self.auth)
        return self.check(GET, response, what)

    def post(self, operation: tuple[str, str], call_id: str, what: str) -> Any:
        response = Client().post(operation[0].replace("{call_id}", call_id), **self.auth)
        return self.check(operation, response, what)


def test_answers_in_every_state_fit_the_served_document(
    world: World, probe_tool_cleanup: None
) -> None:
    probe = install_probe_tool(world)
    api = Contract(world)  # fetched after the probe tool joined the agent's tools
    stock = {"tool": "check_stock", "arguments": {"sku": "a-1"}, "session_id": "reads"}

    assert api.submit(GET_CUSTOMER, "read").status_code == 200
    missing = {**GET_CUSTOMER, "arguments": {"customer_id": "cus_9999"}}
    assert api.submit(missing, "read refused").status_code == 422
    for mode, status in (("fail", 502), ("timeout", 504)):
        probe.mode = mode
        assert api.submit(stock, f"read {mode}").status_code == status
    for body, status in (
        ([], 400),
        ({"tool": "send_email"}, 400),
        ({**SEND_EMAIL, "arguments": {}}, 400),
        ({**SEND_EMAIL, "tool": "launch_rocket"}, 404),
    ):
        assert api.submit(body, f"refused {body}").status_code == status

    key = str(uuid.uuid4())
    sent = api.submit(SEND_EMAIL, "write", key=key)
    assert sent.status_code == 202
    replayed = api.submit(SEND_EMAIL, "write replayed", key=key)
    assert replayed["Idempotent-Replayed"] == "true"
    call_id = sent.json()["id"]
    api.get(call_id, "pending")
    decide(call_id=call_id, reviewer=world.bob, verdict="approve", comment="ok")
    api.get(call_id, "approved", "?wait=0.1&seen=pending")
    runner.execute(call_id)
    assert api.get(call_id, "succeeded").json()["decision"]["by"] == "reviewers"
    assert api.post(CANCEL, call_id, "cancel of a succeeded call").status_code == 409
    assert api.post(RETRY, call_id, "retry of a succeeded call").status_code == 409

    rejected = api.submit({**SEND_EMAIL, "session_id": "r"}, "write").json()["id"]
    decide(call_id=rejected, reviewer=world.bob, verdict="reject", comment="No.")
    assert api.get(rejected, "rejected").json()["decision"]["verdict"] == "reject"

    cancelled = api.submit({**SEND_EMAIL, "session_id": "c"}, "write").json()["id"]
    assert api.post(CANCEL, cancelled, "cancel").status_code == 200
    assert api.post(CANCEL, cancelled, "cancel again").status_code == 200

    expired = api.submit({**SEND_EMAIL, "session_id": "e"}, "write").json()["id"]
    ToolCall.objects.filter(pk=expired).update(expires_at=timezone.now())
    assert expire_call(call_id=expired)
    assert api.get(expired, "expired").json()["status"] == "expired"

    unknown = api.submit({**SEND_EMAIL, "session_id": "u"}, "write").json()["id"]
    decide(call_id=unknown, reviewer=world.bob, verdict="approve", comment="ok")
    assert claim_call(call_id=unknown) is not None
    assert expire_lease(call_id=unknown, now=timezone.now() + timedelta(hours=1))
    assert api.get(unknown, "unknown").json()["status"] == "unknown"

    failed = api.submit(UPDATE_MISSING, "write").json()["id"]
    decide(call_id=failed, reviewer=world.bob, verdict="approve", comment="ok")
    runner.execute(failed)
    assert api.get(failed, "failed write").json()["error"]["code"] == "customer_not_found"
    assert api.post(RETRY, failed, "retry").status_code == 202

    for query in ("?wait=-1", "?seen=bogus", "?wait=nan"):
        assert api.get(call_id, f"GET {query}", query).status_code == 400
    assert api.get("not-a-uuid", "GET of no uuid").status_code == 400
    assert api.get(str(uuid.uuid4()), "GET of no call").status_code == 404
    assert api.post(RETRY, str(uuid.uuid4()), "retry of no call").status_code == 404

    assert api.problems == []
