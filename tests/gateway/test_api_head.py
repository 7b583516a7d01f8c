"""HEAD on the agent API: what GET answers (status and headers) without the body, on every
endpoint that answers GET; a method no endpoint at the path takes is 405 with Allow."""

from __future__ import annotations

import uuid

from django.test import Client

from tests.conftest import World
from tests.support.calls import pending_call


def agent_client(world: World) -> Client:
    return Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {world.token}")


def test_head_answers_as_get_without_the_body(world: World) -> None:
    """HEAD was 405 (Allow: GET) on the two endpoints that read, while the document's own
    answered it: a monitor, or a client asking whether a call exists, was told the method
    is not allowed where HTTP asks every server to take it wherever GET is."""
    client = agent_client(world)
    call = pending_call(world)
    for path in (
        "/api/v1/tools",
        "/api/v1/tools?format=anthropic",
        f"/api/v1/tool-calls/{call.pk}",
    ):
        got = client.get(path)
        headed = client.head(path)
        assert got.status_code == 200, (path, got.content)
        assert headed.status_code == 200, (path, headed.status_code)
        assert headed["Content-Type"] == got["Content-Type"]
        assert headed.content == b""


def test_head_refuses_as_get_does(world: World) -> None:
    """The same refusals, by status: no token, and a call that is not the agent's."""
    unknown = f"/api/v1/tool-calls/{uuid.uuid4()}"
    assert agent_client(world).get(unknown).status_code == 404
    assert agent_client(world).head(unknown).status_code == 404
    anonymous = Client(raise_request_exception=False)
    for path in ("/api/v1/tools", unknown):
        assert anonymous.get(path).status_code == 401
        headed = anonymous.head(path)
        assert headed.status_code == 401
        assert headed["WWW-Authenticate"].startswith("Bearer")
    assert agent_client(world).head("/api/v1/tools?format=yaml").status_code == 400


def test_a_method_an_endpoint_does_not_take_names_head_among_those_it_does(world: World) -> None:
    client = agent_client(world)
    call = pending_call(world)
    for path in ("/api/v1/tools", f"/api/v1/tool-calls/{call.pk}"):
        refused = client.delete(path)
        assert refused.status_code == 405
        assert refused["Allow"] == "GET, HEAD"
        assert refused.json()["error"]["code"] == "method_not_allowed"
    # An endpoint that only changes things takes no HEAD: GET is not allowed there either.
    for path in ("/api/v1/tool-calls", f"/api/v1/tool-calls/{call.pk}/cancel"):
        refused = client.head(path)
        assert refused.status_code == 405
        assert refused["Allow"] == "POST"


def test_the_document_lists_each_read_once_under_get(world: World) -> None:
    """django-ninja repeats an operation for each method it answers, id and all: two
    operations of one id make a document generators refuse."""
    document = Client().get("/api/v1/openapi.json").json()
    ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
    ]
    assert len(ids) == len(set(ids)), ids
    assert not [path for path, item in document["paths"].items() if "head" in item]
    assert "get" in document["paths"]["/api/v1/tools"]
    assert "get" in document["paths"]["/api/v1/tool-calls/{call_id}"]
