"""What an upstream answers, as Countersign keeps it: an MCP server's messages never carry
the credential it was sent, a message cut short never keeps part of one, and a result that
does not fit the server's own output schema is still the result of a call that ran."""

from __future__ import annotations

import base64
import email.utils
import gzip
import json
import re
import socket
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import AsyncIterator
from io import StringIO
from typing import Any

import anyio
import httpx2
import pytest
from django.core.management import call_command
from django.test import override_settings

from core import bounded_http
from tests.conftest import World
from tests.support.compression import gzip_bomb
from tests.support.upstreams.raw_http import RawHttpServer, bare_post
from tests.support.upstreams.raw_http import reply as raw_reply
from tests.support.upstreams.raw_mcp import RawMcpServer
from tools_registry.registry import ToolFailed
from tools_registry.upstreams import http as upstream_http
from tools_registry.upstreams import mcp as upstream_mcp
from tools_registry.upstreams.http import UpstreamUnclear

CANARY = "Bearer MCP-CANARY-SECRET-42"


def call_mcp(server: RawHttpServer) -> Any:
    try:
        return upstream_mcp.call(
            url=server.url,
            headers=[("Authorization", CANARY)],
            tool="t",
            arguments={},
            key="k",
            timeout=5,
        )
    finally:
        server.close()


def test_an_mcp_tools_failure_quoting_the_credential_is_kept_without_it() -> None:
    def quote_it(handler: Any, message: dict[str, Any]) -> None:
        quoted = handler.headers.get("authorization", "")
        raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
            "content": [{"type": "text", "text": f"Token rejected: {quoted}"}],
            "isError": True}})  # fmt: skip

    with pytest.raises(ToolFailed) as failed:
        call_mcp(RawMcpServer(quote_it))
    assert failed.value.code == "upstream_tool_failed"
    assert "MCP-CANARY-SECRET-42" not in failed.value.message
    assert failed.value.message.endswith("Token rejected: [credential]")


@pytest.mark.parametrize("code", [-32602, -32603])
def test_an_mcp_error_quoting_the_credential_is_kept_without_it(code: int) -> None:
    """A refusal (invalid params: not run) and an internal error (unknown outcome) alike."""

    def quote_it(handler: Any, message: dict[str, Any]) -> None:
        quoted = handler.headers.get("authorization", "")
        raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "error": {
            "code": code, "message": f"bad token {quoted}"}})  # fmt: skip

    with pytest.raises(Exception) as raised:
        call_mcp(RawMcpServer(quote_it))
    said = str(getattr(raised.value, "message", raised.value))
    assert "MCP-CANARY-SECRET-42" not in said and "[credential]" in said
    if code == -32602:
        assert isinstance(raised.value, ToolFailed)
    else:
        assert isinstance(raised.value, UpstreamUnclear), "whether it ran is not known"


@pytest.mark.parametrize("kind", ["not a tool result", "not JSON"])
def test_an_mcp_answer_that_cannot_be_read_keeps_no_part_of_the_credential(kind: str) -> None:
    """pydantic's message quotes the value it refused cut to its start and its end, which
    kept the last 20-odd characters of a credential the server quoted back: no whole value
    for ``without_credentials`` to find, and the message is the call's error (the agent,
    the reviewers, the trail)."""
    token = "sk_live_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    def quote_it(handler: Any, message: dict[str, Any]) -> None:
        said = "x" * 60 + " your key was " + handler.headers.get("x-api-key", "")
        if kind == "not a tool result":  # the SDK's types refuse it
            raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
                "content": said}})  # fmt: skip
        else:  # not JSON: the SDK's transport cannot parse it
            raw_reply(handler, 200, f'{{"jsonrpc": "2.0", "id": {message["id"]}, {said}'.encode())

    server = RawMcpServer(quote_it)
    try:
        with pytest.raises(Exception) as raised:
            upstream_mcp.call(url=server.url, headers=[("X-Api-Key", token)], tool="t",
                              arguments={}, key="k", timeout=5)  # fmt: skip
    finally:
        server.close()
    assert not isinstance(raised.value, ToolFailed), "whether the tool ran is not known"
    said = str(raised.value)
    assert not [token[i : i + 8] for i in range(len(token) - 7) if token[i : i + 8] in said], said


def test_a_result_unlike_the_servers_output_schema_is_the_result_of_a_call_that_ran() -> None:
    """The SDK's call_tool would list the tools again and raise on a result that does not fit
    the tool's output schema: a write that ran would be stored unknown."""
    output = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}

    def done(handler: Any, message: dict[str, Any]) -> None:
        raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
            "content": [{"type": "text", "text": "created"}],
            "structuredContent": {"id": "T-1"}}})  # fmt: skip

    server = RawMcpServer(
        done, tools=[{"name": "t", "inputSchema": {"type": "object"}, "outputSchema": output}]
    )
    assert call_mcp(server) == {"id": "T-1"}
    assert server.lists == 0, "no tools/list per call"


def test_an_http_error_cut_short_keeps_no_part_of_the_credential() -> None:
    token = "sk_live_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    def quote_late(handler: Any, body: bytes) -> None:
        raw_reply(handler, 401, {"message": "x" * 270 + " bad key " + token})

    server = RawHttpServer(quote_late)
    try:
        with pytest.raises(ToolFailed) as refused:
            bare_post(server.url, upstream_headers=[("X-Api-Key", token)])
    finally:
        server.close()
    assert token[:12] not in refused.value.message
    assert refused.value.message.endswith("bad key [credential]")


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [upstream_http.MAX_ANSWER_DEPTH, 5_000, 120_000])
def test_an_http_answer_nested_past_what_is_walked_is_kept_as_its_text(
    world: World, depth: int
) -> None:
    """Python's JSON parser goes deeper than Python's own recursion (storing, masking and
    auditing a result walk it recursively): the agent's read was a 500, a write's answer
    lost after it ran. The MCP client's parser refuses such an answer itself."""
    document = {"openapi": "3.1.0", "info": {"title": "Deep", "version": "1"}, "paths": {
        "/deep": {"get": {"operationId": "read_deep", "responses": {"200": {"description": "d"}}}}}}  # fmt: skip
    deep = b"[" * depth + b"]" * depth if depth > 5_000 else b'{"a":' * depth + b"1" + b"}" * depth

    def answer(handler: Any, body: bytes) -> None:
        raw_reply(handler, 200, document if handler.path == "/openapi.json" else deep)

    server = RawHttpServer(answer, gets=True)
    try:
        call_command(
            "add_upstream", "deep", "--openapi", f"{server.url}/openapi.json", "--base-url",
            server.url, "--enable", "--allow", world.agent.name, stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
        read = world.api().submit({"tool": "deep__read_deep", "arguments": {}, "session_id": "s"})
    finally:
        server.close()
    assert read.status_code == 200, read.content[:300]
    if depth == upstream_http.MAX_ANSWER_DEPTH:
        assert read.json()["result"] == json.loads(deep), "as deep as may be: its JSON"
    else:
        assert read.json()["result"] == {"text": deep.decode()}


@pytest.mark.parametrize("inside", [1, 8, 20, 39])
def test_an_http_answer_cut_through_the_credential_keeps_no_start_of_it(inside: int) -> None:
    """An agent that could move an echo against the cut would read the credential's every
    start, one answer each."""
    token = "sk_live_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    def echo_late(handler: Any, body: bytes) -> None:
        raw_reply(handler, 200, b"x" * (1000 - inside) + token.encode(), "text/plain")

    server = RawHttpServer(echo_late)
    try:
        with override_settings(UPSTREAM_MAX_RESPONSE_BYTES=1000):
            answer = bare_post(server.url, upstream_headers=[("X-Api-Key", token)])
    finally:
        server.close()
    assert answer["truncated"] is True
    assert answer["text"] == "x" * (1000 - inside), "cut before the credential's start"


@pytest.mark.parametrize(
    "location",
    [
        "http://{key}@elsewhere.example/",
        "http://me:{key}@elsewhere.example:8080/x",
        "http://{key}.elsewhere.example/",
    ],
)
def test_a_redirect_quoting_the_credential_fails_the_call_without_it(location: str) -> None:
    """The failure names where the upstream redirected: a Location holding the credential
    (its userinfo, or a host's label) put it in the call's error, the agent's to read."""
    key = "k3y-abcdefghijklmnopqrstuvwxyz0123456789"

    def redirect(handler: Any, body: bytes) -> None:
        handler.send_response(302)
        handler.send_header("location", location.format(key=handler.headers["x-api-key"]))
        handler.send_header("content-length", "0")
        handler.end_headers()

    server = RawHttpServer(redirect)
    try:
        with pytest.raises(ToolFailed) as moved:
            bare_post(server.url, upstream_headers=[("X-Api-Key", key)])
    finally:
        server.close()
    assert moved.value.code == "upstream_redirect"
    assert "abcdefgh" not in moved.value.message, moved.value.message
    assert "elsewhere.example" in moved.value.message, "still says where"


def test_a_lookup_that_quotes_the_credential_finds_the_effect_without_it() -> None:
    """What a lookup finds is the call's result, as a 2xx of the call itself is."""

    def found(handler: Any, body: bytes) -> None:
        quoted = handler.headers.get("authorization", "")
        raw_reply(handler, 200, {"refund": "re_1", "request": {"authorization": quoted}})

    server = RawHttpServer(found, gets=True)
    try:
        looked_up = upstream_http.lookup(
            lookup={"method": "GET", "path": "/refunds", "parameter": "key", "in": "query"},
            base_url=server.url,
            upstream_headers=[("Authorization", CANARY)],
            key="k",
            timeout=5,
        )
    finally:
        server.close()
    assert looked_up.found is True
    assert looked_up.result == {"refund": "re_1", "request": {"authorization": "[credential]"}}


# A token with what escaping and percent-encoding change: base64's "/" and "+", a quote, a
# backslash, an ampersand. Its letters run ("Q7rX9kLmZ2") survives every encoding.
ODD_TOKEN = 'sk_live_Q7rX9kLmZ2/ab+cd"ef\\gh&ij'
ODD = f"Bearer {ODD_TOKEN}"


def echoed(quote_it: Any, ctype: str = "text/plain") -> Any:
    """A 2xx of an HTTP upstream that quotes the Authorization header it was sent, as
    ``quote_it`` writes it, through ``upstream_http.call``."""

    def answer(handler: Any, body: bytes) -> None:
        raw_reply(handler, 200, quote_it(handler.headers.get("authorization", "")), ctype)

    server = RawHttpServer(answer)
    try:
        return bare_post(server.url, upstream_headers=[("Authorization", ODD)])
    finally:
        server.close()


@pytest.mark.parametrize(
    ("quote_it", "ctype", "kept"),
    [
        # JSON written by PHP (json_encode escapes "/"), not parsed (text/plain).
        (lambda sent: json.dumps({"authorization": sent}).replace("/", "\\/").encode(),
         "text/plain", {"text": '{"authorization": "[credential]"}'}),
        # JSON written by Go (encoding/json escapes "&", "<", ">").
        (lambda sent: json.dumps({"authorization": sent}).replace("&", "\\u0026").encode(),
         "text/plain", {"text": '{"authorization": "[credential]"}'}),
        # A debug field holding the request as JSON text: a JSON string inside the answer.
        (lambda sent: {"debug": json.dumps({"authorization": sent})},
         "application/json", {"debug": '{"authorization": "[credential]"}'}),
        # The request's URL or form, percent-encoded: a query string ("+" for a space),
        # encodeURIComponent's, in lower-case hex.
        (lambda sent: f"next=/v1?auth={urllib.parse.quote_plus(sent)}".encode(),
         "text/plain", {"text": "next=/v1?auth=[credential]"}),
        (lambda sent: f"auth={urllib.parse.quote(sent, safe="-_.!~*'()")}".encode(),
         "text/plain", {"text": "auth=[credential]"}),
        (lambda sent: re.sub("%..", lambda hex_: hex_[0].lower(), "auth=" + urllib.parse.quote(
            sent, safe="")).encode(),
         "text/plain", {"text": "auth=[credential]"}),
    ],
    ids=["json-php", "json-go", "json-in-json", "query", "uri-component", "lower-hex"],
)  # fmt: skip
def test_an_http_answer_quoting_the_credential_encoded_reaches_the_agent_without_it(
    quote_it: Any, ctype: str, kept: Any
) -> None:
    """Scrubbing matched the credential as sent only: escaped in JSON that stays text, or
    percent-encoded in a URL, the agent read it whole."""
    assert echoed(quote_it, ctype) == kept


def test_an_http_answer_quoting_a_basic_credential_decoded_reaches_the_agent_without_it() -> None:
    """An upstream reads ``Basic <base64 of user:password>`` and quotes what it read: the
    user and the password (8 characters or more each), the pair, and the header escaped."""
    user, password = "countersign-bot", "pa55/word+Secret?"
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def quote_it(handler: Any, body: bytes) -> None:
        sent = handler.headers.get("authorization", "")
        pair = base64.b64decode(sent.split()[1]).decode()
        raw_reply(handler, 200, {"user": pair.split(":")[0], "password": pair.split(":")[1],
                                 "pair": pair, "request": json.dumps({"auth": sent}).replace(
                                     "/", "\\/")})  # fmt: skip

    server = RawHttpServer(quote_it)
    try:
        answer = bare_post(server.url, upstream_headers=[("Authorization", basic)])
    finally:
        server.close()
    assert "/" in basic, "its base64 holds a slash, which PHP's JSON escapes"
    assert answer == {
        "user": "[credential]",
        "password": "[credential]",
        "pair": "[credential]",
        "request": '{"auth": "[credential]"}',
    }


def test_an_http_error_quoting_the_credential_in_its_json_is_kept_without_it() -> None:
    """An error with no message of its own is quoted as its JSON, which escapes the
    credential's quote and backslash: Countersign's own encoding kept it."""

    def refuse(handler: Any, body: bytes) -> None:
        raw_reply(handler, 401, {"received": {"authorization": handler.headers["authorization"]}})

    server = RawHttpServer(refuse)
    try:
        with pytest.raises(ToolFailed) as refused:
            bare_post(server.url, upstream_headers=[("Authorization", ODD)])
    finally:
        server.close()
    assert "Q7rX9kLmZ2" not in refused.value.message
    assert refused.value.message.endswith('{"received": {"authorization": "[credential]"}}')


@pytest.mark.parametrize("inside", [8, 12, 30])
def test_an_http_answer_cut_through_the_credential_encoded_keeps_no_start_of_it(
    inside: int,
) -> None:
    def echo_late(handler: Any, body: bytes) -> None:
        quoted = urllib.parse.quote(handler.headers["authorization"], safe="")
        raw_reply(handler, 200, b"x" * (1000 - inside) + quoted.encode(), "text/plain")

    server = RawHttpServer(echo_late)
    try:
        with override_settings(UPSTREAM_MAX_RESPONSE_BYTES=1000):
            answer = bare_post(server.url, upstream_headers=[("Authorization", ODD)])
    finally:
        server.close()
    assert answer["text"] == "x" * (1000 - inside), "cut before the credential's start"


def test_an_mcp_result_quoting_the_credential_as_json_text_is_kept_without_it() -> None:
    """A tool's text content is often its result as JSON: a credential with a quote or a
    backslash is escaped there."""

    def quote_it(handler: Any, message: dict[str, Any]) -> None:
        text = json.dumps({"authorization": handler.headers.get("authorization", "")})
        raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
            "content": [{"type": "text", "text": text}]}})  # fmt: skip

    server = RawMcpServer(quote_it)
    try:
        answer = upstream_mcp.call(url=server.url, headers=[("Authorization", ODD)], tool="t",
                                   arguments={}, key="k", timeout=5)  # fmt: skip
    finally:
        server.close()
    assert answer == {"text": '{"authorization": "[credential]"}'}


@pytest.mark.django_db
def test_a_call_whose_answer_quotes_the_credential_encoded_stores_and_audits_it_without(
    world: World,
) -> None:
    """Through the API: the agent's answer, the call's stored result and the trail."""
    from approvals.models import ToolCall
    from audit import chain
    from audit.models import AuditEvent

    document = {"openapi": "3.1.0", "info": {"title": "Echo", "version": "1"}, "paths": {
        "/echo": {"get": {"operationId": "read_echo", "responses": {"200": {"description": "e"}}}}}}  # fmt: skip

    def answer(handler: Any, body: bytes) -> None:
        if handler.path == "/openapi.json":
            raw_reply(handler, 200, document)
            return
        sent = handler.headers.get("authorization", "")
        raw_reply(handler, 200, {"debug": json.dumps({"authorization": sent}).replace(
            "/", "\\/"), "next": f"/echo?auth={urllib.parse.quote_plus(sent)}"})  # fmt: skip

    server = RawHttpServer(answer, gets=True)
    try:
        call_command(
            "add_upstream", "echo", "--openapi", f"{server.url}/openapi.json", "--base-url",
            server.url, "--header", f"Authorization: {ODD}", "--enable", "--allow", world.agent.name,
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
        read = world.api().submit({"tool": "echo__read_echo", "arguments": {}, "session_id": "s"})
    finally:
        server.close()
    assert read.status_code == 200, read.content[:300]
    assert read.json()["result"] == {
        "debug": '{"authorization": "[credential]"}',
        "next": "/echo?auth=[credential]",
    }
    chain.seal_and_anchor()
    for where, text in {
        "answer": read.content.decode(),
        "call": json.dumps(list(ToolCall.objects.values_list("result", flat=True))),
        "audit trail": json.dumps(list(AuditEvent.objects.values_list("data", flat=True))),
    }.items():
        assert "Q7rX9kLmZ2" not in text, f"the credential leaked into the {where}"


@pytest.mark.parametrize(
    "value", ["café", "line\r\nX-Other: 1", "nul\x00", " leading", "trailing ", "\t"]
)
def test_a_header_argument_http_cannot_carry_is_refused_unsent(value: str) -> None:
    """httpx refuses such a value as it writes the request: nothing is sent, yet the error
    left a write's outcome unknown, re-run with the same key to no end."""
    received: list[bytes] = []
    server = RawHttpServer(lambda h, b: (received.append(b), raw_reply(h, 200, {"ok": True})))
    try:
        with pytest.raises(ToolFailed) as refused:
            upstream_http.call(
                operation={
                    "method": "POST",
                    "path": "/notes",
                    "parameters": [{"name": "X-Note", "in": "header"}],
                    "body": None,
                },
                base_url=server.url,
                upstream_headers=[],
                idempotency_header="Idempotency-Key",
                key="k",
                arguments={"X-Note": value},
                timeout=5,
            )
    finally:
        server.close()
    assert refused.value.code == "invalid_arguments"
    assert received == []


@pytest.mark.parametrize(
    "base_url",
    ["http://[::1", "ftp://files.example.com"],  # unparsable, not HTTP
)
def test_an_upstream_url_that_cannot_be_requested_is_refused_unsent(base_url: str) -> None:
    with pytest.raises(ToolFailed) as refused:
        bare_post(base_url, path="/notes")
    assert refused.value.code == "upstream_url_invalid"


def test_an_upstream_that_cannot_be_reached_fails_the_call_unsent() -> None:
    """Nothing listens: no connection, so no request was sent. The call failed (the agent may
    send it again), it is not an unknown outcome left to reconciliation."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ToolFailed) as refused:
        bare_post(f"http://127.0.0.1:{port}", path="/notes")
    assert (refused.value.code, refused.value.retryable) == ("upstream_unreachable", True)


def test_an_mcp_server_whose_name_resolves_slower_than_the_timeout_is_given_up_within_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lookup runs in the event loop's default executor, which asyncio.run waited for as
    it ended: a resolver taking 8 s held a call (and a listing) with a timeout of 1 s for 8 s,
    a worker, or a web thread for a read. It fails unsent within the timeout."""
    from tools_registry.upstreams.offers import ImportFailed

    real_getaddrinfo = socket.getaddrinfo
    answered = threading.Event()  # the resolver answers once the test is over

    def slow_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("slow-dns.invalid", b"slow-dns.invalid"):
            answered.wait(8)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    url = "http://slow-dns.invalid:8000/mcp"
    try:
        started = time.monotonic()
        with pytest.raises(ToolFailed) as refused:
            upstream_mcp.call(url=url, headers=[], tool="t", arguments={}, key="k", timeout=1)
        assert time.monotonic() - started < 3
        assert (refused.value.code, refused.value.unsent) == ("upstream_unreachable", True)
        started = time.monotonic()
        with pytest.raises(ImportFailed, match="could not be read"):
            upstream_mcp.offer(upstream="slow", url=url, headers=[], timeout=1)
        assert time.monotonic() - started < 3
    finally:
        answered.set()


def call_encoded(body: bytes, encoding: str) -> Any:
    def answer(handler: Any, received: bytes) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-encoding", encoding)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server = RawHttpServer(answer)
    try:
        return bare_post(server.url)
    finally:
        server.close()


@pytest.mark.parametrize("charset", ["base64", "idna", "undefined"])
def test_an_upstreams_answer_in_a_charset_that_is_no_text_encoding_is_read_as_utf8(
    charset: str,
) -> None:
    """Python knows base64 and zlib as codecs, which bytes.decode refuses (LookupError), and
    idna and undefined, which refuse to replace what they cannot decode (UnicodeError): a
    2xx, the effect done, was a handler error, a write's outcome unknown."""

    def answer(handler: Any, body: bytes) -> None:
        raw_reply(handler, 200, b"created", f"text/plain; charset={charset}")

    server = RawHttpServer(answer)
    try:
        assert bare_post(server.url) == {"text": "created"}
    finally:
        server.close()


def test_an_upstreams_compressed_answer_is_read_and_never_inflated_past_the_limit() -> None:
    """A gzipped answer is the tool's JSON as ever; one that inflates to 128 MB (about
    130 KB sent) is stored cut at the limit, inflated no further."""
    answer = {"id": "T-1", "items": list(range(1000))}
    assert call_encoded(gzip.compress(json.dumps(answer).encode()), "gzip") == answer
    bomb = gzip_bomb(128 << 20)
    tracemalloc.start()
    try:
        with override_settings(UPSTREAM_MAX_RESPONSE_BYTES=100_000):
            cut = call_encoded(bomb, "gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cut["truncated"] is True and cut["text"] == "a" * 100_000
    assert peak < 16 << 20, f"{peak >> 20} MB at the peak for a {len(bomb)}-byte answer"


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
def test_an_upstreams_answer_in_an_encoding_that_cannot_be_bounded_is_not_read(
    encoding: str,
) -> None:
    """Such an answer (which Countersign does not ask for) cannot be inflated a bounded
    piece at a time: the upstream answered, but what it said is unknown."""
    with pytest.raises(UpstreamUnclear, match="could not be decoded"):
        call_encoded(b"\x1b\x00\x00", encoding)


def test_an_mcp_servers_compressed_message_counts_inflated_and_is_never_inflated_whole() -> None:
    """The MCP client's transport inflates what it hands the SDK, up to the document limit:
    httpx2 would inflate each chunk whole before the limit could count it."""
    bomb = gzip_bomb(128 << 20)
    small = gzip.compress(b'{"ok": true}')

    class Sent(httpx2.AsyncByteStream):  # as from the network (content= is read at once)
        def __init__(self, body: bytes) -> None:
            self.body = body

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for start in range(0, len(self.body), 100):
                yield self.body[start : start + 100]

    def answer(request: httpx2.Request) -> httpx2.Response:
        body = bomb if request.url.path == "/bomb" else small
        encoding = "gzip"
        return httpx2.Response(200, headers={"content-encoding": encoding}, stream=Sent(body))

    async def get(path: str) -> bytes:
        transport = bounded_http.CappedTransport(httpx2.MockTransport(answer), limit=100_000)
        async with httpx2.AsyncClient(transport=transport) as client:
            return (await client.get(f"http://upstream{path}")).content

    assert anyio.run(get, "/small") == b'{"ok": true}'
    tracemalloc.start()
    try:
        with pytest.raises(bounded_http.AnswerTooLarge):
            anyio.run(get, "/bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MB at the peak for a {len(bomb)}-byte answer"


@pytest.mark.django_db
def test_an_mcp_servers_refused_listing_quoting_the_credential_is_kept_without_it() -> None:
    """A sync's failure is stored on the upstream (shown in the admin) and audited: a server
    that quotes its credential back in the error to tools/list must not put it there."""
    from audit.models import AuditEvent
    from tools_registry.services.upstreams import register_upstream, sync_upstream
    from tools_registry.upstreams.offers import ImportFailed

    def answer(handler: Any, body: bytes) -> None:
        message = json.loads(body)
        if message.get("method") == "initialize":
            raw_reply(
                handler,
                200,
                {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "result": {
                        "protocolVersion": message["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "raw", "version": "1"},
                    },
                },
            )
        elif "id" not in message:
            raw_reply(handler, 202, b"")
        else:
            quoted = handler.headers.get("authorization", "")
            raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "error": {
                "code": -32001, "message": f"bad token {quoted}"}})  # fmt: skip

    server = RawHttpServer(answer)
    server.url = f"{server.url}/mcp"
    try:
        upstream = register_upstream(
            name="quoting", kind="mcp", url=server.url, headers=[("Authorization", CANARY)]
        )
        with pytest.raises(ImportFailed) as failed:
            sync_upstream(upstream=upstream)
    finally:
        server.close()
    upstream.refresh_from_db()
    failure = AuditEvent.objects.get(action="upstream.sync_failed")
    for said in (failed.value.message, upstream.last_sync_error, json.dumps(failure.data)):
        assert "MCP-CANARY-SECRET-42" not in said
    assert "[credential]" in upstream.last_sync_error


def test_an_openapi_document_dripped_is_given_up_within_the_upstreams_timeout() -> None:
    """Each byte well within httpx's read timeout: the import (an admin's request) waited
    12 s with a timeout of 1 s. The timeout bounds the whole fetch, as a call's does."""
    from tests.support.upstreams.raw_http import drip_headers
    from tools_registry.upstreams import openapi as upstream_openapi
    from tools_registry.upstreams.offers import ImportFailed

    server = RawHttpServer(drip_headers, gets=True)
    started = time.monotonic()
    try:
        with pytest.raises(ImportFailed, match="could not be fetched"):
            upstream_openapi.fetch(f"{server.url}/openapi.json", headers=[], timeout=1)
    finally:
        server.close()
    assert time.monotonic() - started < 4


def test_an_openapi_document_compressed_is_never_inflated_past_the_limit() -> None:
    bomb = gzip_bomb(128 << 20)

    def answer(handler: Any, body: bytes) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-encoding", "gzip")
        handler.send_header("content-length", str(len(bomb)))
        handler.end_headers()
        handler.wfile.write(bomb)

    from tools_registry.upstreams import openapi as upstream_openapi
    from tools_registry.upstreams.offers import ImportFailed

    server = RawHttpServer(answer, gets=True)
    tracemalloc.start()
    try:
        with (
            override_settings(UPSTREAM_MAX_DOCUMENT_BYTES=100_000),
            pytest.raises(ImportFailed, match="larger than"),
        ):
            upstream_openapi.fetch(f"{server.url}/openapi.json", headers=[], timeout=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.close()
    assert peak < 16 << 20, f"{peak >> 20} MB at the peak for a {len(bomb)}-byte document"


def test_an_mcp_result_in_hand_is_kept_when_closing_the_session_takes_too_long() -> None:
    """The tool ran and answered; the SDK then ends the session (a DELETE) within the same
    timeout. A server slow to answer that goodbye made a call that succeeded a timeout,
    its outcome unknown: a write went to reconciliation or to a person."""

    def answer(handler: Any, body: bytes) -> None:
        message = json.loads(body)
        if "id" not in message:
            raw_reply(handler, 202, b"")
            return
        result: dict[str, Any] = {"content": [{"type": "text", "text": "done"}]}
        if message["method"] == "initialize":
            result = {"protocolVersion": message["params"]["protocolVersion"],
                      "capabilities": {"tools": {}}, "serverInfo": {"name": "raw", "version": "1"}}  # fmt: skip
        data = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("mcp-session-id", "s-1")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def slow_goodbye(handler: Any) -> None:
        time.sleep(5)
        raw_reply(handler, 200, b"")

    def no_stream(handler: Any) -> None:
        raw_reply(handler, 405, b"")

    server = RawHttpServer(answer)
    server.httpd.RequestHandlerClass.do_DELETE = slow_goodbye  # type: ignore[attr-defined]
    server.httpd.RequestHandlerClass.do_GET = no_stream  # type: ignore[attr-defined]
    started = time.monotonic()
    try:
        result = upstream_mcp.call(url=f"{server.url}/mcp", headers=[], tool="t",
                                   arguments={}, key="k", timeout=1.5)  # fmt: skip
    finally:
        server.close()
    assert result == {"text": "done"}
    assert time.monotonic() - started < 3, "the timeout still bounds the whole call"


@pytest.mark.django_db
def test_an_openapi_document_refused_quoting_the_credential_is_kept_without_it() -> None:
    """The validator's message quotes the part of the document it refuses, and a document
    server may echo what it was sent into it: the failure is stored on the upstream, shown
    in the admin and audited, as an MCP server's refused listing is, without the credential."""
    from audit.models import AuditEvent
    from tools_registry.services.upstreams import register_upstream, sync_upstream
    from tools_registry.upstreams.offers import ImportFailed

    def answer(handler: Any, body: bytes) -> None:
        raw_reply(handler, 200, {
            "openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {},
            "x_debug": {"sent": handler.headers.get("authorization", "")},
        })  # fmt: skip

    server = RawHttpServer(answer, gets=True)
    try:
        upstream = register_upstream(
            name="echoing",
            kind="openapi",
            url=f"{server.url}/openapi.json",
            headers=[("Authorization", CANARY)],
        )
        with pytest.raises(ImportFailed) as failed:
            sync_upstream(upstream=upstream)
    finally:
        server.close()
    upstream.refresh_from_db()
    failure = AuditEvent.objects.get(action="upstream.sync_failed")
    assert "x_debug" in upstream.last_sync_error, "the validator's message, kept"
    for said in (failed.value.message, upstream.last_sync_error, json.dumps(failure.data)):
        assert CANARY not in said


def test_an_mcp_servers_listing_is_read_within_the_document_limit_whatever_its_pages() -> None:
    """Each message is held to UPSTREAM_MAX_DOCUMENT_BYTES, but a listing paged was read page
    after page up to 500 tools, all held in memory together: 500 tools of 5 MB each at the
    default limit, within a timeout of up to 600 s. An OpenAPI document is held to it whole."""
    pages: list[str] = []

    def answer(handler: Any, body: bytes) -> None:
        message = json.loads(body)
        method = message.get("method")
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "raw", "version": "1"},
            }
        elif "id" not in message:
            raw_reply(handler, 202, b"")
            return
        else:
            page = int((message.get("params") or {}).get("cursor") or 0)
            pages.append(str(page))
            tools = [
                {
                    "name": f"t{page}_{n}",
                    "description": "x" * 1_500,
                    "inputSchema": {"type": "object"},
                }
                for n in range(50)
            ]  # about 80 KB a page, each within the limit
            result = {"tools": tools, "nextCursor": str(page + 1)}
        raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": result})

    server = RawHttpServer(answer)
    try:
        with (
            override_settings(UPSTREAM_MAX_DOCUMENT_BYTES=100_000),
            pytest.raises(upstream_mcp.ImportFailed) as failed,
        ):
            upstream_mcp.offer(upstream="paged", url=f"{server.url}/mcp", headers=[], timeout=20)
    finally:
        server.close()
    assert "larger than 100000 bytes" in failed.value.message
    assert len(pages) <= 3, f"{len(pages)} pages read"  # of the 10 up to 500 tools


def _cut_through_an_emoji(handler: Any, message: dict[str, Any], *, sse: bool) -> None:
    """A result whose text was cut between the two halves of an emoji (JavaScript's slice
    does), which JSON.stringify and json.dumps write as a lone escaped surrogate."""
    data = (
        '{"jsonrpc":"2.0","id":' + str(message["id"]) + ',"result":{"content":[{"type":"text",'
        '"text":"cut \\ud83d"}],"structuredContent":{"said":"cut \\ud83d",'
        '"whole":"\\ud83d\\ude00","kept":"\\\\ud83d"}}}'
    )
    if not sse:
        raw_reply(handler, 200, data.encode())
        return
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.send_header("connection", "close")
    handler.end_headers()
    for piece in ("event: message\ndata: ", data[:70], data[70:], "\n\n"):  # cut in the escape
        handler.wfile.write(piece.encode())
        handler.wfile.flush()
        time.sleep(0.05)
    handler.close_connection = True


@pytest.mark.parametrize("sse", [False, True], ids=["json", "event-stream"])
def test_an_mcp_result_holding_a_lone_surrogate_is_kept_as_an_http_answer_is(sse: bool) -> None:
    """The SDK's parser refuses what Python's and PostgreSQL's callers take in their stride
    (an HTTP answer's is kept, U+FFFD in its place): the tool ran, yet the call's outcome
    was unknown, its result lost, and a rerunnable server's re-runs all ended the same."""
    server = RawMcpServer(lambda handler, message: _cut_through_an_emoji(handler, message, sse=sse))
    try:
        answer = upstream_mcp.call(
            url=server.url, headers=[], tool="do_it", arguments={}, key="k-1", timeout=5
        )
    finally:
        server.close()
    assert answer == {"said": "cut \ufffd", "whole": "\U0001f600", "kept": "\\ud83d"}
    assert len(server.calls) == 1


def _answer_with(handler: Any, message: dict[str, Any], result: Any, *, sse: bool) -> None:
    data = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
    if not sse:
        raw_reply(handler, 200, data.encode())
        return
    body = f"event: message\r\ndata: {data}\r\n\r\n".encode()
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.mark.parametrize("sse", [False, True], ids=["json", "event-stream"])
def test_an_mcp_result_with_a_content_block_the_sdk_does_not_know_is_kept_as_sent(
    sse: bool,
) -> None:
    """A block of a kind the SDK's types do not know (a later revision's, a server's own):
    the SDK refused the whole result, and a call that ran was left unknown, its result lost,
    a rerunnable server's call re-run. Kept as the server sent it, without the credential."""

    def answer(handler: Any, message: dict[str, Any]) -> None:
        widget = {"type": "widget", "id": "w-1", "said": handler.headers["authorization"]}
        result = {"content": [{"type": "text", "text": "Made w-1."}, widget]}
        _answer_with(handler, message, result, sse=sse)

    assert call_mcp(RawMcpServer(answer)) == {
        "text": "Made w-1.",
        "content": [
            {"type": "text", "text": "Made w-1."},
            {"type": "widget", "id": "w-1", "said": "[credential]"},
        ],
    }

    def failed(handler: Any, message: dict[str, Any]) -> None:
        result = {"content": [{"type": "widget"}, {"type": "text", "text": "No."}], "isError": True}
        _answer_with(handler, message, result, sse=sse)

    with pytest.raises(ToolFailed, match="The upstream tool failed: No") as refused:
        call_mcp(RawMcpServer(failed))
    assert refused.value.code == "upstream_tool_failed"


@pytest.mark.parametrize("charset", ["utf-16", "idna", "latin-1"])
def test_an_mcp_event_stream_naming_a_charset_is_read_as_the_utf8_it_always_is(
    charset: str,
) -> None:
    """An event stream is UTF-8 whatever its Content-Type says (WHATWG): read by the charset
    named, the SDK's reader failed (utf-16, idna) or garbled it (latin-1), and a call that
    ran lost its result, its outcome unknown."""

    def answer(handler: Any, message: dict[str, Any]) -> None:
        result = {"content": [{"type": "text", "text": "créé"}]}
        data = json.dumps(
            {"jsonrpc": "2.0", "id": message["id"], "result": result}, ensure_ascii=False
        )
        event = f"event: message\ndata: {data}\n\n".encode()
        raw_reply(handler, 200, event, f"text/event-stream; charset={charset}")

    server = RawMcpServer(answer)
    try:
        result = upstream_mcp.call(
            url=server.url, headers=[], tool="make", arguments={}, key="k-1", timeout=5
        )
    finally:
        server.close()
    assert result == {"text": "créé"}
    assert len(server.calls) == 1


@pytest.mark.parametrize(
    "ctype",
    ["application/problem+json", "application/hal+json", "Application/JSON; charset=utf-8"],
)
def test_an_http_answer_in_any_json_media_type_is_read_as_json(ctype: str) -> None:
    """Only a type spelt ``application/json...`` was parsed: a HAL or JSON:API result
    reached the agent as one string, and an RFC 9457 problem's message was its JSON text
    cut at 300 characters, not its ``detail``."""

    def answer(handler: Any, body: bytes) -> None:
        if handler.path == "/ok":
            raw_reply(handler, 200, {"id": "r-1", "_links": {"self": "/r/1"}}, ctype)
        else:
            raw_reply(handler, 403, {"type": "about:blank", "title": "Forbidden",
                                     "detail": "Your balance is 30."}, ctype)  # fmt: skip

    server = RawHttpServer(answer)
    try:
        assert bare_post(server.url, path="/ok") == {"id": "r-1", "_links": {"self": "/r/1"}}
        with pytest.raises(ToolFailed) as refused:
            bare_post(server.url, path="/no")
    finally:
        server.close()
    assert (
        refused.value.message == "The upstream refused the request (HTTP 403): Your balance is 30."
    )


def test_an_mcp_result_that_is_not_text_is_kept_without_the_credential() -> None:
    """A tool that answers with an image or a file (a resource) had its result stored as
    ``{"text": ""}``: a call that ran lost what it made. Its blocks are kept, scrubbed as
    its text is."""
    image = {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}

    def answer(handler: Any, message: dict[str, Any]) -> None:
        quoted = handler.headers.get("authorization", "")
        resource = {
            "type": "resource",
            "resource": {
                "uri": "file:///report.txt",
                "mimeType": "text/plain",
                "text": f"sent {quoted}",
            },
        }
        raw_reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
            "content": [{"type": "text", "text": "Here it is."}, image, resource]}})  # fmt: skip

    assert call_mcp(RawMcpServer(answer)) == {
        "text": "Here it is.",
        "content": [
            {"type": "text", "text": "Here it is."},
            image,
            {"type": "resource", "resource": {
                "uri": "file:///report.txt", "mimeType": "text/plain",
                "text": "sent [credential]"}},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("status", "said", "kept"),
    [
        (429, "120", 120),
        (503, "120", None),  # no refusal: a 5xx leaves the outcome unknown
        (429, "soon", None),
        (429, "99999999999", 24 * 3600),
        (429, "in-two-minutes", 120),
    ],
)
def test_a_retryable_refusals_retry_after_is_kept_in_seconds(
    status: int, said: str, kept: int | None
) -> None:
    """RFC 9110 10.2.3: a number of seconds or an HTTP date, at most a day."""
    if said == "in-two-minutes":
        said = email.utils.formatdate(time.time() + 120, usegmt=True)

    def refuse(handler: Any, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("retry-after", said)
        handler.send_header("content-length", "0")
        handler.end_headers()

    server = RawHttpServer(refuse)
    try:
        with pytest.raises(Exception) as raised:
            bare_post(server.url)
    finally:
        server.close()
    if status == 503:
        assert isinstance(raised.value, UpstreamUnclear)
        return
    assert isinstance(raised.value, ToolFailed) and raised.value.retryable
    got = raised.value.retry_after
    if said.endswith("GMT"):  # a date: the seconds left until it, as the test reads them
        assert got is not None and 118 <= got <= 121
    else:
        assert got == kept
