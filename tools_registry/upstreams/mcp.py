"""An MCP server's tools, and calling them, through the official MCP SDK's client.

Each tool becomes ``<upstream>__<tool>`` with the server's input schema. Its risk comes
from its annotations: ``readOnlyHint`` read, ``destructiveHint`` destructive, anything else
write. A call passes its idempotency key in ``_meta["io.countersign/idempotency-key"]``;
its result is the tool's structured content, or its text (with its content blocks when
some are not text: an image, a resource, a kind the SDK does not know, kept as sent). An
``isError`` result means the tool reported a failure (the call failed), and so does a
server that opens no session (nothing was sent), while a broken connection or a timeout in
the session leaves the outcome unknown. A ``tools/call`` or ``tools/list`` answered 404 in
its session (the server lost it, unread) is sent once more in a new session. The executor
is synchronous, so each connection runs on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx2
import mcp_types as types
from django.conf import settings
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter, ValidationError

from audit.masking import cut_short, without_quoted_input
from core import bounded_http, tls
from tools_registry.policy import Risk
from tools_registry.registry import ToolFailed
from tools_registry.upstreams import http, secrets
from tools_registry.upstreams.http import UpstreamUnclear
from tools_registry.upstreams.offers import (
    JSON,
    ImportedTool,
    ImportFailed,
    Offer,
    drop_duplicates,
    expansion_problems,
    object_schema_problems,
    tool_name,
)

IDEMPOTENCY_KEY = "io.countersign/idempotency-key"
MAX_TOOLS = 500


Hook = Callable[[httpx2.Response], Awaitable[None]]


def _connect(
    url: str, headers: list[tuple[str, str]], timeout: float, on_response: Hook | None = None
) -> Client:
    # A message past the document limit is not read (memory); the call's outcome is then
    # unknown, as with any answer that could not be read.
    transport = bounded_http.CappedTransport(
        httpx2.AsyncHTTPTransport(verify=tls.context()),
        limit=settings.UPSTREAM_MAX_DOCUMENT_BYTES,
    )
    # Only the encodings the transport inflates within the limit: httpx2 asks for every one
    # it can decode (br, zstd once brotli or zstd is installed), and a server answering so
    # left the outcome of a call that ran unknown. (An upstream may not set this header.)
    asked = {**dict(headers), "Accept-Encoding": bounded_http.ACCEPT_ENCODING}
    client = httpx2.AsyncClient(
        headers=asked,
        timeout=timeout,
        follow_redirects=False,
        transport=transport,
        event_hooks={"response": [on_response] if on_response else []},
    )
    return Client(streamable_http_client(url, http_client=client), read_timeout_seconds=timeout)


def _run[T](
    work: Callable[[Client], Awaitable[T]],
    url: str,
    headers: list[tuple[str, str]],
    timeout: float,
    on_response: Hook | None = None,
) -> T:
    async def main() -> T:
        # The host's name is looked up in the loop's default executor; asyncio.run waits for
        # that executor's threads as it ends (for 300 s at most), so a lookup given up at the
        # timeout still held the call (a worker, or a web thread for a read) until the
        # resolver answered. Given up, it finishes in its own thread, as ``bounded_http``'s.
        asyncio.get_running_loop().set_default_executor(_Abandoning())
        answered: list[T] = []
        try:
            with anyio.fail_after(timeout):
                async with _connect(url, headers, timeout, on_response) as client:
                    answered.append(await work(client))
        except Exception:
            # Only closing the session (the SDK's DELETE, within the same timeout) failed or
            # ran out of time: the server had answered, and a call that ran is not unknown.
            if answered:
                return answered[0]
            raise
        return answered[0]

    return anyio.run(main)


class _Abandoning(ThreadPoolExecutor):
    """An executor whose shutdown waits for no thread (a DNS lookup in one)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)


def offer(*, upstream: str, url: str, headers: list[tuple[str, str]], timeout: float) -> Offer:
    """The tools the server lists (all pages), or ImportFailed if it cannot be reached.

    A ``tools/list`` answered with HTTP 404 in the session the server opened says it ended
    that session (it restarted, or another instance behind its address answered), as for a
    call: the listing is read again, from its first page, in a new session, within what is
    left of the timeout; a second failure fails the read as any other."""
    limit = settings.UPSTREAM_MAX_DOCUMENT_BYTES
    deadline = time.monotonic() + timeout
    try:
        try:
            listed = _list_tools(url, headers, timeout)
        except _SessionLost:
            left = max(deadline - time.monotonic(), 0.0)
            listed = _list_tools(url, headers, left, again=True)
    except Exception as exc:  # unreachable, not an MCP server, a timeout: all the same here
        if isinstance(_leaf(exc), _ListingTooLarge):
            raise ImportFailed(
                f"The MCP server's tools are larger than {limit} bytes listed together."
            ) from None
        if isinstance(_leaf(exc), _ListingLoops):
            raise ImportFailed(
                "The MCP server's listing goes round in a loop: it gave a page's cursor again."
            ) from None
        raise ImportFailed(f"The MCP server could not be read: {_reason(exc, headers)}") from None
    return offer_from(upstream, listed)


def _list_tools(
    url: str, headers: list[tuple[str, str]], timeout: float, *, again: bool = False
) -> list[types.Tool]:
    """``offer``'s one reading of every page; ``_SessionLost`` when the session was lost,
    unless it is ``again`` the second."""
    limit = settings.UPSTREAM_MAX_DOCUMENT_BYTES
    list_answered: list[httpx2.Response] = []  # each tools/list's HTTP status line and headers

    async def on_response(response: httpx2.Response) -> None:
        if (_sent(response) or {}).get("method") == "tools/list":
            list_answered.append(response)

    async def list_all(client: Client) -> list[types.Tool]:
        tools: list[types.Tool] = []
        held = 0
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = await client.session.list_tools(
                params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
            )
            # Each message is held to the limit; the pages kept together are too, as an
            # OpenAPI document is (500 pages of the limit each were all held at once).
            held += sum(
                len(tool.model_dump_json(by_alias=True, exclude_none=True)) for tool in page.tools
            )
            if held > limit:
                raise _ListingTooLarge
            tools.extend(page.tools)
            cursor = page.next_cursor
            # More than MAX_TOOLS is refused whole (``offer_from``): no page past it is read.
            if not cursor or len(tools) > MAX_TOOLS:
                return tools
            if cursor in seen:
                # Read again, it lists the same tools again: each would be a duplicate, none
                # imported, and every tool imported before disabled as gone.
                raise _ListingLoops
            seen.add(cursor)

    try:
        return _run(list_all, url, headers, timeout, on_response)
    except Exception as exc:
        if not again and isinstance(_leaf(exc), MCPError) and _session_lost(list_answered):
            raise _SessionLost from None
        raise


class _ListingTooLarge(Exception):
    """The tools listed so far are past ``UPSTREAM_MAX_DOCUMENT_BYTES`` together."""


class _ListingLoops(Exception):
    """The server gave a cursor it had given before: its listing would never end."""


def offer_from(upstream: str, listed: list[types.Tool]) -> Offer:
    """The importable tools among those a server listed; ImportFailed past ``MAX_TOOLS``."""
    if len(listed) > MAX_TOOLS:
        # Not the first MAX_TOOLS of them: the rest, imported before or not, would be gone
        # from the offer, and a re-sync disabled each tool listed past it as removed.
        raise ImportFailed(
            f"The MCP server lists more than {MAX_TOOLS} tools, the most one upstream may "
            "offer; nothing changes."
        )
    found = Offer()
    for listed_tool in listed:
        try:
            found.tools.append(_tool(upstream, listed_tool))
        except ValueError as problem:
            found.skipped.append(f"{listed_tool.name}: {problem}")
    return drop_duplicates(found)


def _tool(upstream: str, tool: types.Tool) -> ImportedTool:
    name = tool_name(upstream, tool.name)
    if name is None:
        raise ValueError(f"{upstream}__{tool.name} is not a valid tool name")
    if problems := object_schema_problems(tool.input_schema) or expansion_problems(
        tool.input_schema
    ):
        raise ValueError(problems[0])
    hints = tool.annotations or types.ToolAnnotations()
    if hints.read_only_hint:
        risk = Risk.READ
    elif hints.destructive_hint:
        risk = Risk.DESTRUCTIVE
    else:
        risk = Risk.WRITE
    output = tool.output_schema if risk == Risk.READ else None
    if output is not None and (object_schema_problems(output) or expansion_problems(output)):
        output = None
    return ImportedTool(
        source_name=tool.name,
        name=name,
        description=(tool.description or tool.title or tool.name)[:2000],
        input_schema=dict(tool.input_schema),
        risk=risk,
        overwrites=bool(hints.destructive_hint) and risk != Risk.READ,
        idempotent=bool(hints.idempotent_hint) or risk == Risk.READ,
        open_world=hints.open_world_hint is not False,
        output_schema=dict(output) if output else None,
    )


# The JSON-RPC errors that say the request was refused before the tool could run: no such
# tool, arguments it does not take (and the SDK's answer to an HTTP 404). Every other error
# may come after the tool ran: an internal error, and what the SDK makes of an HTTP 5xx (a
# gateway in front of the server), an answer it could not read or a stream that ended first.
REFUSED_BEFORE_RUNNING = frozenset({types.METHOD_NOT_FOUND, types.INVALID_PARAMS})


def call(
    *,
    url: str,
    headers: list[tuple[str, str]],
    tool: str,
    arguments: JSON,
    key: str,
    timeout: float,
) -> JSON:
    """Run the upstream's tool once, with the call's key in ``_meta``.

    A ``tools/call`` answered with HTTP 404 in the session the server opened says the server
    ended that session before it read the call (it restarted, or another instance behind
    its address answered): the protocol asks the client to initialize a new one. Nothing
    ran, so the call is sent once more, in a new session, within what is left of its
    timeout; a second failure is reported as any other."""
    deadline = time.monotonic() + timeout
    try:
        return _call_once(
            url=url, headers=headers, tool=tool, arguments=arguments, key=key, timeout=timeout
        )
    except _SessionLost:
        pass
    return _call_once(
        url=url,
        headers=headers,
        tool=tool,
        arguments=arguments,
        key=key,
        timeout=max(deadline - time.monotonic(), 0.0),
        again=True,
    )


class _SessionLost(Exception):
    """The server answered ``tools/call`` or ``tools/list`` with 404 in its session: it
    did not read it."""


def _call_once(
    *,
    url: str,
    headers: list[tuple[str, str]],
    tool: str,
    arguments: JSON,
    key: str,
    timeout: float,
    again: bool = False,
) -> JSON:
    """``call``'s one attempt; ``_SessionLost`` when the session was lost, unless it is
    ``again`` the second."""
    opened: list[bool] = []  # whether the server opened a session: tools/call is sent in one
    call_answered: list[httpx2.Response] = []  # tools/call's HTTP status line and headers
    kept = bytearray()  # tools/call's answer as it was read (already held to the limit)
    call_id: list[Any] = []

    async def on_response(response: httpx2.Response) -> None:
        sent = _sent(response)
        if sent is not None and sent.get("method") == "tools/call":
            call_answered.append(response)
            call_id.append(sent.get("id"))
            assert isinstance(response.stream, httpx2.AsyncByteStream)  # an async transport's
            response.stream = _Kept(response.stream, kept)

    async def run(client: Client) -> types.CallToolResult:
        opened.append(True)
        meta: Any = {IDEMPOTENCY_KEY: key}  # a key of Countersign's own in _meta
        # The request itself, not the SDK's call_tool: that lists the server's tools again
        # after each call and raises when the result does not fit the tool's output schema,
        # which would make a write that ran "unknown". What is stored is checked by
        # Countersign (a result cut past the size limit cannot fit any schema).
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name=tool, arguments=arguments, _meta=meta)
        )
        try:
            return await client.session.send_request(request, types.CallToolResult)
        except ValidationError:
            # A result the SDK's types refuse (a content block of a kind they do not know, a
            # later revision's): the server answered, so the tool ran, and a write was left
            # unknown and re-run. Its result is kept as the server sent it.
            if (sent_back := _result_as_sent(bytes(kept), call_id[-1:])) is None:
                raise
            return sent_back

    try:
        result = _run(run, url, headers, timeout, on_response)
    except BaseException as exc:
        cause = _leaf(exc)
        if not again and opened and isinstance(cause, MCPError) and _session_lost(call_answered):
            raise _SessionLost from None
        if not opened and isinstance(cause, Exception):
            # Not connected, or the server refused to open a session (initialize: a wrong
            # credential, a timeout): tools/call was never sent, so the tool did not run,
            # as an HTTP upstream that cannot be reached.
            raise ToolFailed(
                cut_short(f"The MCP server could not be reached: {_reason(exc, headers)}", 500),
                code="upstream_unreachable",
                retryable=True,
                unsent=True,
            ) from None
        if isinstance(cause, MCPError) and cause.code in REFUSED_BEFORE_RUNNING:
            refusal = _without_credentials(cause.message, headers)
            raise ToolFailed(
                cut_short(f"The upstream refused the call: {refusal}", 500),
                code="upstream_refused",
            ) from None
        if isinstance(cause, MCPError) and (refused := _refused_over_http(call_answered)):
            raise refused from None
        # A timeout, a broken connection, or any other error: whether the tool ran is
        # unknown (a write is reconciled or goes to a person; never reported as not run).
        said = str(cause)
        if (scrubbed := _without_credentials(said, headers)) != said:
            # The server quoted its credential back, or pydantic what the server sent (the
            # message reaches the call).
            raise UpstreamUnclear(cut_short(f"{type(cause).__name__}: {scrubbed}", 500)) from None
        raise cause from None
    text = " ".join(t for c in result.content if (t := _text(c)) is not None)
    if result.is_error:
        failure = secrets.without_credentials(text, headers)
        raise ToolFailed(
            cut_short(f"The upstream tool failed: {failure}", 500), code="upstream_tool_failed"
        )
    structured = result.structured_content
    if isinstance(structured, dict):
        answer = structured
    else:
        answer = {"text": text} if structured is None else {"result": structured}
        if structured is None and not all(isinstance(c, types.TextContent) for c in result.content):
            # An image, audio, a resource or a link to one: the result itself. Only the text
            # was kept, an empty one for a tool that answers with a file, and a call that ran
            # lost its result.
            answer["content"] = [
                c
                if isinstance(c, dict)
                else c.model_dump(mode="json", by_alias=True, exclude_none=True)
                for c in result.content
            ]
    # Before the cut: a cut through a credential would keep its start.
    return _stored(secrets.answer_without_credentials(answer, headers))


class _Kept(httpx2.AsyncByteStream):
    """An answer's stream that keeps what is read of it."""

    def __init__(self, inner: httpx2.AsyncByteStream, into: bytearray) -> None:
        self._inner = inner
        self._into = into

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._into += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


_CONTENT_BLOCK: TypeAdapter[types.ContentBlock] = TypeAdapter(types.ContentBlock)


def _result_as_sent(answer: bytes, request_id: list[Any]) -> types.CallToolResult | None:
    """The result ``answer`` (a JSON message, or an event stream of them) holds for the
    request, its content blocks the SDK does not know kept as they were sent; None if there
    is none, or its content is no list of objects (what the tool answered is not known)."""
    text = answer.decode(errors="replace")
    data = [text]
    if not text.lstrip().startswith("{"):  # an event stream, read by the parser the SDK uses
        stream = httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=answer,
            request=httpx2.Request("POST", "http://upstream"),
        )
        try:
            data = [event.data for event in httpx2.EventSource(stream)]
        except httpx2.SSEError:
            return None
    for item in data:
        try:
            message = json.loads(item)
        except (ValueError, RecursionError):
            continue
        if not isinstance(message, dict) or [message.get("id")] != request_id:
            continue
        result = message.get("result")
        if not isinstance(result, dict):
            return None
        content = result.get("content")
        if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
            return None
        blocks: list[Any] = []
        for block in content:
            try:
                blocks.append(_CONTENT_BLOCK.validate_python(block, by_name=False))
            except ValidationError:
                blocks.append(block)
        return types.CallToolResult.model_construct(
            content=blocks,
            structured_content=result.get("structuredContent"),
            is_error=result.get("isError") is True,
        )
    return None


def _sent(response: httpx2.Response) -> dict[str, Any] | None:
    """The JSON-RPC message ``response`` answers, or None (not a POST of the SDK's)."""
    if response.request.method != "POST":
        return None
    try:
        sent = json.loads(response.request.content)
    except (httpx2.RequestNotRead, ValueError):
        return None  # no JSON-RPC request of the SDK's: it sends each whole
    return sent if isinstance(sent, dict) else None


def _session_lost(answered: list[httpx2.Response]) -> bool:
    """Whether the server answered the last of these requests (``tools/call``, or a page of
    ``tools/list``), sent in the session it opened, with 404: the session is over, and the
    request was not read (the MCP transport's rule)."""
    return bool(
        answered
        and answered[-1].status_code == 404
        and answered[-1].request.headers.get("mcp-session-id")
    )


def _refused_over_http(answered: list[httpx2.Response]) -> ToolFailed | None:
    """The failure of a ``tools/call`` the server (or a gateway before it) refused with an HTTP
    redirect or a 4xx, as an HTTP upstream's: the request was not carried out. The SDK gives
    each an internal error, which left a write the server never ran unknown, for
    reconciliation or a person (a gateway's 429, a 401 once a token expired). A 303 See
    Other says it was carried out, its result elsewhere: still unknown."""
    status = answered[-1].status_code if answered else 0
    if 300 <= status < 400 and status != http.SEE_OTHER:
        return ToolFailed(
            f"The MCP server redirected the call (HTTP {status}); redirects are not followed.",
            code="upstream_redirect",
        )
    if 400 <= status < 500:
        return ToolFailed(
            f"The MCP server refused the call (HTTP {status}).",
            code=f"upstream_{status}",
            retryable=status in http.RETRYABLE,
            retry_after=http.retry_after(answered[-1].headers.get("retry-after"))
            if status in http.RETRYABLE
            else None,
        )
    return None


def _text(block: Any) -> str | None:
    """A content block's text, if it is a text block (one kept as sent too)."""
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, dict) and block.get("type") == "text":
        return block["text"] if isinstance(block.get("text"), str) else None
    return None


def _stored(answer: JSON) -> JSON:
    """The answer, or its start marked truncated past ``UPSTREAM_MAX_RESPONSE_BYTES``, as an
    HTTP upstream's answer is stored."""
    limit = settings.UPSTREAM_MAX_RESPONSE_BYTES
    encoded = json.dumps(answer, ensure_ascii=False).encode()
    if len(encoded) <= limit:
        return answer
    text = encoded[:limit].decode(errors="ignore")
    return {"truncated": True, "limit_bytes": limit, "text": text}


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside the task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _without_credentials(message: str, headers: list[tuple[str, str]]) -> str:
    """A message about the server's answer without its credentials, nor what pydantic
    quoted of the answer (``audit.masking.without_quoted_input``)."""
    return secrets.without_credentials(without_quoted_input(message), headers)


def _reason(exc: BaseException, headers: list[tuple[str, str]]) -> str:
    cause = _leaf(exc)
    # The server's message is stored on the upstream and audited: without the credential it
    # was sent (some servers quote it back), taken out before the message is cut short.
    message = _without_credentials(str(cause), headers) if isinstance(cause, MCPError) else ""
    return f"{type(cause).__name__}{': ' + cut_short(message, 200) if message else ''}"
