"""What an upstream's answer makes of an approved write, through the executor: a failure is
a failure only when the effect surely did not happen, a re-run that never reached the
upstream says nothing of an earlier attempt that may have had its effect, and an answer the
upstream was asked for can be read."""

from __future__ import annotations

import contextlib
import time
import uuid
from copy import deepcopy
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from approvals import sweeps
from approvals.execution.runner import execute
from approvals.models import Status, ToolCall
from approvals.services.calls import create_call
from approvals.services.decisions import decide
from gateway.responses import respond_with
from tests.conftest import World
from tests.support.upstreams.raw_http import RawHttpServer
from tests.support.upstreams.raw_http import reply as raw_reply
from tests.support.upstreams.raw_mcp import RawMcpServer
from tools_registry import services as registry_services
from tools_registry.models import Tool, Upstream
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams import openapi

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Shop", "version": "1"},
    "paths": {
        "/orders": {
            "post": {
                "operationId": "create_order",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"item": {"type": "string"}},
                                "required": ["item"],
                            }
                        }
                    }
                },
                "responses": {"201": {"description": "The order"}},
            }
        },
        "/orders/{order_id}": {
            "get": {
                "operationId": "get_order",
                "parameters": [
                    {
                        "name": "order_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"200": {"description": "The order"}},
            }
        },
    },
}


class Shop:
    """An HTTP API that places one order per POST (it counts them) and answers as told."""

    def __init__(self) -> None:
        self.orders = 0
        self.answer: Any = lambda handler: raw_reply(handler, 201, {"id": "ord_1"})
        self.server = RawHttpServer(self._handle, gets=True)

    def _handle(self, handler: Any, body: bytes) -> None:
        if handler.command == "GET" and handler.path.endswith("/openapi.json"):
            raw_reply(handler, 200, DOCUMENT)
            return
        if handler.command == "POST":
            self.orders += 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it gave up
            self.answer(handler)


@pytest.fixture
def shop(world: World) -> Any:
    shop = Shop()
    call_command(
        "add_upstream", "shop", "--openapi", f"{shop.server.url}/openapi.json",
        "--base-url", shop.server.url, "--header", "Authorization: Bearer shop-token-0001",
        "--enable", "--allow", world.agent.name, stdout=StringIO(), stderr=StringIO(),
    )  # fmt: skip
    for tool in Tool.objects.filter(upstream__name="shop"):
        registry_services.grant_review(tool=tool, user=world.bob)
    Tool.objects.filter(name="shop__create_order").update(timeout_seconds=1)
    yield shop
    shop.server.close()


def approved_order(world: World) -> ToolCall:
    call = create_call(
        agent=world.agent,
        tool=Tool.objects.get(name="shop__create_order"),
        arguments={"item": "espresso beans"},
        session_id="s",
        request_key=uuid.uuid4().hex,
    )
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve")
    return call


def redirect(status: int) -> Any:
    def answer(handler: Any) -> None:
        handler.send_response(status)
        handler.send_header("location", "/orders/ord_1")
        handler.send_header("content-length", "0")
        handler.end_headers()

    return answer


def test_a_write_answered_see_other_is_not_reported_failed(world: World, shop: Shop) -> None:
    """POST, then 303 See Other to what it made (RFC 9110 15.4.4: the request was carried
    out, its result is elsewhere). Failed, the agent was told the order was not placed, and
    a new call placed it again."""
    shop.answer = redirect(303)
    call = approved_order(world)
    execute(call.pk)
    call.refresh_from_db()
    assert shop.orders == 1
    assert call.status == Status.UNKNOWN, call.error
    assert call.error is not None and "redirect" in call.error["message"]


@pytest.mark.parametrize("status", [307, 308])
def test_a_write_redirected_to_be_sent_again_elsewhere_failed(
    world: World, shop: Shop, status: int
) -> None:
    """307 and 308 ask for the same request at another URL: this one was not carried out."""
    shop.answer = redirect(status)
    call = approved_order(world)
    execute(call.pk)
    call.refresh_from_db()
    assert (call.status, call.error["code"]) == (Status.FAILED, "upstream_redirect")


def test_a_reads_redirect_fails_it(world: World, shop: Shop) -> None:
    """A read has no effect to lose: redirected, it failed, whatever the status."""
    shop.answer = redirect(303)
    call = create_call(
        agent=world.agent,
        tool=Tool.objects.get(name="shop__get_order"),
        arguments={"order_id": "ord_1"},
        session_id="s",
        request_key=uuid.uuid4().hex,
    )
    execute(call.pk)
    call.refresh_from_db()
    assert (call.status, call.error["code"]) == (Status.FAILED, "upstream_redirect")


def test_a_rerun_whose_headers_cannot_be_read_leaves_the_earlier_attempts_outcome_open(
    world: World, shop: Shop, settings: Any
) -> None:
    """The first attempt placed the order and timed out; the secrets key was rotated before
    reconciliation re-ran it. The re-run sent nothing (the upstream's headers cannot be
    decrypted), which says nothing of the first attempt: the call stays unknown, never
    failed for the agent to place the order again under a new call."""

    def slow(handler: Any) -> None:
        time.sleep(1.5)  # past the tool's timeout, after the order
        raw_reply(handler, 201, {"id": "ord_1"})

    shop.answer = slow
    Upstream.objects.filter(name="shop").update(idempotency_header="Idempotency-Key")
    call = approved_order(world)
    execute(call.pk)
    call.refresh_from_db()
    assert (call.status, call.error["code"]) == (Status.UNKNOWN, "timeout")
    settings.UPSTREAM_SECRETS_KEY = Fernet.generate_key().decode()
    assert sweeps.reconcile_unknown() == {"rerun": 1}
    execute(call.pk)
    call.refresh_from_db()
    assert shop.orders == 1, "nothing was sent"
    assert (call.status, call.error["code"]) == (Status.UNKNOWN, "upstream_headers_unreadable")


def test_an_api_that_ignores_keys_gets_one_effect_from_a_timeout_and_a_person_decides(
    world: World, shop: Shop
) -> None:
    """The shop was added with no idempotency header: it says nothing of whether it honours
    one, and this one does not (one order per POST). Its write timed out after the order.
    Every automatic re-run would be another order; the call waits for a person instead."""

    def slow(handler: Any) -> None:
        time.sleep(1.5)  # past the tool's timeout, after the order
        raw_reply(handler, 201, {"id": "ord_1"})

    shop.answer = slow
    call = approved_order(world)
    execute(call.pk)
    for _ in range(4):  # more rounds than EXECUTOR_AUTO_RERUNS allows re-runs
        sweeps.reconcile_unknown()
        if ToolCall.objects.get(pk=call.pk).status == Status.APPROVED:
            execute(call.pk)
    call.refresh_from_db()
    assert shop.orders == 1
    assert (call.status, call.needs_attention) == (Status.UNKNOWN, True)


def test_an_api_that_honours_its_named_header_is_re_run_by_itself(world: World, shop: Shop) -> None:
    """An admin named the header the API honours: a timeout after the effect is settled by
    sending the call again with its key (the API answers with the first effect)."""
    Upstream.objects.filter(name="shop").update(idempotency_header="Idempotency-Key")
    keys: list[str] = []

    def keyed(handler: Any) -> None:
        keys.append(handler.headers.get("idempotency-key", ""))
        if len(keys) == 1:
            time.sleep(1.5)  # past the tool's timeout, after the order
        raw_reply(handler, 201, {"id": "ord_1"})

    shop.answer = keyed
    call = approved_order(world)
    execute(call.pk)
    assert sweeps.reconcile_unknown() == {"rerun": 1}
    execute(call.pk)
    call.refresh_from_db()
    assert call.status == Status.SUCCEEDED
    assert keys == [call.execution_key, call.execution_key]


def test_an_api_sent_no_key_is_not_asked_for_one_by_its_lookup(world: World) -> None:
    """The document names a lookup by key, but no idempotency header was named, so the API
    never got the call's key: asked by it, it has no record ("not found"), and the person
    was told the downstream had no record of an order it had placed."""
    document = deepcopy(DOCUMENT)
    document["servers"] = [{"url": "/"}]
    document["paths"]["/orders"]["post"]["x-countersign-lookup"] = "order_by_key"
    document["paths"]["/orders/by-key/{key}"] = {
        "get": {
            "operationId": "order_by_key",
            "parameters": [
                {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": {"description": "The order"}},
        }
    }
    asked: list[str] = []

    def api(handler: Any, body: bytes) -> None:
        asked.append(f"{handler.command} {handler.path}")
        if handler.command == "GET":
            raw_reply(handler, 404, {"error": {"message": "No such key."}})
            return
        time.sleep(1.5)  # past the tool's timeout, after the order
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw_reply(handler, 201, {"id": "ord_1"})

    server = RawHttpServer(api, gets=True)
    try:
        upstream = register_upstream(
            name="shop",
            kind=Upstream.Kind.OPENAPI,
            url=f"{server.url}/openapi.json",
            idempotency_header="",  # none named
        )
        sync_upstream(
            upstream=upstream,
            enable_new=True,
            reader=lambda u: openapi.offer(
                document, upstream=u.name, document_url=u.url, base_url=server.url
            ),
        )
        tool = Tool.objects.get(name="shop__create_order")
        Tool.objects.filter(pk=tool.pk).update(timeout_seconds=1)
        world.agent.allowed_tools.add(tool)
        registry_services.grant_review(tool=tool, user=world.bob)
        call = approved_order(world)
        execute(call.pk)
        sweeps.reconcile_unknown()
    finally:
        server.close()
    call.refresh_from_db()
    assert asked == ["POST /orders"], "the lookup was not asked"
    assert (call.status, call.needs_attention) == (Status.UNKNOWN, True)
    assert "cannot say whether the effect happened" in call.attention_reason


def approved_mcp_call(world: World, server: RawMcpServer) -> ToolCall:
    upstream = register_upstream(name="desk", kind=Upstream.Kind.MCP, url=server.url)
    sync_upstream(upstream=upstream, enable_new=True)
    tool = Tool.objects.get(name="desk__make")
    world.agent.allowed_tools.add(tool)
    registry_services.grant_review(tool=tool, user=world.bob)
    call = create_call(
        agent=world.agent, tool=tool, arguments={}, session_id="s", request_key=uuid.uuid4().hex
    )
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve")
    return call


MAKE = [{"name": "make", "inputSchema": {"type": "object"}}]


def test_an_mcp_answer_that_is_not_utf8_is_kept_as_an_event_streams_is(world: World) -> None:
    """A server that wrote a byte UTF-8 cannot decode in its JSON answer (Latin-1 text, a
    string cut through a character) ran the tool: the answer is kept with U+FFFD in its
    place, as in an event stream and an HTTP upstream's answer. The client's parser refused
    it, and the call that ran ended unknown."""

    def latin1(handler: Any, message: dict[str, Any]) -> None:
        text = b'{"content": [{"type": "text", "text": "caf\xe9 ordered"}]}'
        body = b'{"jsonrpc": "2.0", "id": %d, "result": %s}' % (message["id"], text)
        raw_reply(handler, 200, body)

    server = RawMcpServer(latin1, tools=MAKE)
    try:
        call = approved_mcp_call(world, server)
        execute(call.pk)
    finally:
        server.close()
    call.refresh_from_db()
    assert len(server.calls) == 1
    assert (call.status, call.result) == (Status.SUCCEEDED, {"text": "caf\ufffd ordered"})


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [(401, "upstream_401", False), (429, "upstream_429", True), (307, "upstream_redirect", False)],
)
def test_an_mcp_call_refused_over_http_failed_as_an_http_upstreams(
    world: World, status: int, code: str, retryable: bool
) -> None:
    """A gateway before the server (or the server) refusing ``tools/call`` with a 4xx, or
    redirecting it, did not carry it out: the SDK makes each an internal error, and the
    write that never ran was left unknown, for reconciliation or a person to settle."""

    def refuse(handler: Any, message: dict[str, Any]) -> None:
        handler.send_response(status)
        handler.send_header("location", "https://elsewhere.example/mcp")
        handler.send_header("retry-after", "30")
        handler.send_header("content-length", "0")
        handler.end_headers()

    server = RawMcpServer(refuse, tools=MAKE)
    try:
        call = approved_mcp_call(world, server)
        execute(call.pk)
    finally:
        server.close()
    call.refresh_from_db()
    assert len(server.calls) == 1
    assert call.status == Status.FAILED
    assert (call.error["code"], call.error["retryable"]) == (code, retryable)


def test_an_mcp_calls_internal_error_over_http_leaves_a_write_unknown(world: World) -> None:
    """A 5xx may come after the tool ran (a gateway that gave up waiting): unknown still."""

    def fail(handler: Any, message: dict[str, Any]) -> None:
        raw_reply(handler, 502, b"Bad Gateway", "text/plain")

    server = RawMcpServer(fail, tools=MAKE)
    try:
        call = approved_mcp_call(world, server)
        execute(call.pk)
    finally:
        server.close()
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN


def test_an_mcp_answer_is_asked_for_in_an_encoding_it_can_be_read_in(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MCP client asked for every encoding its HTTP library can decode (br and zstd
    too, once brotli or zstd is installed: Python 3.14 has zstd); a server that then
    compressed its result so could not be read within the size limit, and every write
    that ran ended unknown. Asked for gzip and deflate only, as an HTTP upstream is."""
    import httpx2._client

    monkeypatch.setattr(httpx2._client, "ACCEPT_ENCODING", "gzip, deflate, br, zstd")
    asked: list[str] = []

    def negotiating(handler: Any, message: dict[str, Any]) -> None:
        asked.append(handler.headers.get("accept-encoding", ""))
        result = {"content": [{"type": "text", "text": "ticket made"}]}
        body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        if "br" in asked[-1]:
            handler.send_response(200)  # as a server that compresses when it may
            handler.send_header("content-type", "application/json")
            handler.send_header("content-encoding", "br")
            handler.send_header("content-length", "4")
            handler.end_headers()
            handler.wfile.write(b"\x0b\x02\x80\x03")
            return
        raw_reply(handler, 200, body)

    server = RawMcpServer(negotiating, tools=MAKE)
    try:
        call = approved_mcp_call(world, server)
        execute(call.pk)
    finally:
        server.close()
    call.refresh_from_db()
    assert len(server.calls) == 1
    assert (call.status, call.result) == (Status.SUCCEEDED, {"text": "ticket made"})
    assert asked == ["gzip, deflate"]


def test_a_hidden_argument_in_an_upstreams_url_is_not_logged(
    world: World, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs each request's method and URL at INFO, and an upstream's URL carries the
    call's path and query arguments: a value the tool hides from reviewers (here an order id
    marked sensitive), which the log's masking has no detector for, was written to every
    process's log in clear. The HTTP clients' own request lines are not logged; what was
    sent is in the trail, masked."""
    registry_services.update_policy(
        tool=Tool.objects.get(name="shop__get_order"),
        changes={"sensitive_fields": ["order_id"]},
        changed_by=world.alice,
    )
    hidden_order = "ord_Quixote7731"
    call = create_call(
        agent=world.agent,
        tool=Tool.objects.get(name="shop__get_order"),
        arguments={"order_id": hidden_order},
        session_id="s",
        request_key=uuid.uuid4().hex,
    )
    shop.answer = lambda handler: raw_reply(handler, 200, {"id": "ord_1"})
    with caplog.at_level("INFO"):  # the root's level in production, as LOG_LEVEL's default
        execute(call.pk)
    call.refresh_from_db()
    assert call.status == Status.SUCCEEDED, call.error
    assert [r.getMessage() for r in caplog.records if hidden_order in r.getMessage()] == []


def read_order(world: World) -> ToolCall:
    call = create_call(
        agent=world.agent,
        tool=Tool.objects.get(name="shop__get_order"),
        arguments={"order_id": "ord_1"},
        session_id="s",
        request_key=uuid.uuid4().hex,
    )
    execute(call.pk)
    call.refresh_from_db()
    return call


def test_a_read_the_upstream_asks_to_wait_for_is_not_asked_again_and_its_agent_is_told(
    world: World, shop: Shop
) -> None:
    """A 429 with Retry-After: 60 was asked again at once, each of the read's attempts within
    a second (each refused, each counted against the limit), and the agent's 502 said only
    "try again later"."""
    asked: list[str] = []

    def limited(handler: Any) -> None:
        asked.append(handler.command)
        handler.send_response(429)
        handler.send_header("retry-after", "60")
        handler.send_header("content-length", "0")
        handler.end_headers()

    shop.answer = limited
    Tool.objects.filter(name="shop__get_order").update(max_attempts=3)
    call = read_order(world)
    assert asked == ["GET"], "asked once"
    assert (call.status, call.error["code"], call.error["retry_after"]) == (
        Status.FAILED, "upstream_429", 60)  # fmt: skip
    answer = respond_with(call)  # what the agent's REST (and MCP) request is answered
    assert (answer.status, answer.headers.get("Retry-After")) == (502, "60")
    assert "60 s" in answer.body["error"]["suggestion"]


def test_a_read_asked_to_wait_a_moment_is_asked_again_after_it(world: World, shop: Shop) -> None:
    """A wait within a read's backoff is waited for, then the read is asked again."""
    asked: list[float] = []

    def limited_once(handler: Any) -> None:
        asked.append(time.monotonic())
        if len(asked) > 1:
            raw_reply(handler, 200, {"id": "ord_1"})
            return
        handler.send_response(429)
        handler.send_header("retry-after", "1")
        handler.send_header("content-length", "0")
        handler.end_headers()

    shop.answer = limited_once
    Tool.objects.filter(name="shop__get_order").update(max_attempts=3)
    call = read_order(world)
    assert (call.status, call.result) == (Status.SUCCEEDED, {"id": "ord_1"})
    assert len(asked) == 2 and asked[1] - asked[0] >= 1
