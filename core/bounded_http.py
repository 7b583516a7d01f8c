"""Reading an answer from a server Countersign does not control (an upstream, a webhook
receiver) within a size and a time.

httpx's timeout bounds each read, not the whole answer: a server sending a byte now and then
would hold a worker, or a web thread for a read call, without end, and one sending a
gigabyte would hold it in memory. ``read`` stops at ``limit`` bytes and at ``deadline``;
``CappedTransport`` does the same for the MCP client's asynchronous streams, which the SDK
reads itself.

Two ways past those limits are closed here too. A compressed answer is inflated a bounded
piece at a time (``Inflater``): httpx inflates each chunk whole before anyone can count it,
and 250 KB of gzip are 256 MB. And the deadline bounds the whole attempt
(``DeadlineBackend``, ``client_within``): a server dripping its status line and headers a
byte at a time answers each read within httpx's timeout, before ``read`` is even called.
``get`` puts the two together for a document fetched whole.

``CappedTransport`` also mends what the MCP SDK's parser refuses of valid JSON (a lone
surrogate's escape, ``SurrogateMender``), and bytes that are no UTF-8 (as U+FFFD): a result
that could not be parsed was lost. It reads an event stream as the UTF-8 every one is,
whatever charset the server named.
"""

from __future__ import annotations

import codecs
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
import httpx2

# What an answer may be encoded in: one layer of what zlib inflates a bounded piece at a
# time. Sent as the request's Accept-Encoding, so that a server that honours it never sends
# br, zstd or layers ("gzip, gzip" is legal, seldom seen, and a bomb's favourite).
ACCEPT_ENCODING = "gzip, deflate"


class AnswerUnreadable(httpx.DecodingError):
    """An answer in a Content-Encoding that cannot be inflated within a limit (br, zstd,
    one unknown, more than one layer): it is not read at all."""


def read(response: httpx.Response, *, limit: int, deadline: float) -> tuple[bytes, bool]:
    """(at most ``limit`` bytes of the body, decoded, whether there was more). Raises
    ``httpx.ReadTimeout`` once ``deadline`` (``time.monotonic()``) has passed,
    ``AnswerUnreadable`` for an encoding it cannot bound, ``httpx.DecodingError`` for a
    corrupt one."""
    inflater = Inflater.of(response.headers.get_list("content-encoding", split_commas=True))
    body = bytearray()
    # The raw bytes, inflated here: ``iter_bytes`` would inflate each chunk whole first.
    for chunk in response.iter_raw():
        body += inflater.inflate(chunk, at_most=limit + 1 - len(body)) if inflater else chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer took longer than its timeout")
        if inflater and inflater.finished:
            break  # what follows the compressed stream is not part of the answer (as httpx)
    return bytes(body), False


def text(raw: bytes, charset: str | None) -> str:
    """``raw`` decoded by the charset a server named (what cannot be, replaced), or as UTF-8
    when that names a codec that is no text encoding (base64, zlib, rot13) or one that
    cannot replace what it cannot decode (idna, undefined): Python knows those, so httpx
    passes them on, and ``bytes.decode`` raises LookupError or UnicodeError."""
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except (LookupError, UnicodeError):
        return raw.decode("utf-8", errors="replace")


class Inflater:
    """Undoes a gzip or deflate Content-Encoding, giving out no more than it is asked for:
    httpx's decoders inflate each chunk whole before anyone can count it, and 100 KB of
    gzip can be 100 MB."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16) if encoding == "gzip" else None
        self._head = b""

    @classmethod
    def of(cls, content_encoding: Iterable[str]) -> Inflater | None:
        """The inflater of a Content-Encoding header's values (None: nothing to undo)."""
        encodings = [value.strip().lower() for value in content_encoding]
        encodings = ["gzip" if e == "x-gzip" else e for e in encodings if e not in ("", "identity")]
        if not encodings:
            return None
        if len(encodings) > 1 or encodings[0] not in ("gzip", "deflate"):
            raise AnswerUnreadable(
                f"the answer's Content-Encoding ({', '.join(encodings)[:100]}) "
                "cannot be read within a size limit"
            )
        return cls(encodings[0])

    @property
    def finished(self) -> bool:
        return self._zlib is not None and self._zlib.eof

    def inflate(self, data: bytes, *, at_most: int) -> bytes:
        """Up to ``at_most`` (at least 1) bytes inflated from ``data``. Whatever is left
        of it is dropped: the caller asks for one byte past its limit, and stops there."""
        if self._zlib is None:
            # "deflate" is meant to be zlib-wrapped, yet servers send it raw too: its two
            # first bytes tell which (httpx tries the wrapper and falls back on an error).
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            wrapped = data[0] & 0x0F == zlib.DEFLATED and int.from_bytes(data[:2]) % 31 == 0
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        try:
            return self._zlib.decompress(data, max(at_most, 1))
        except zlib.error as exc:
            raise httpx.DecodingError(f"{self._encoding}: {exc}") from exc


def _time_left(deadline: float, timeout: float | None, expired: type[Exception]) -> float:
    """The timeout of one network operation: its own, cut to what is left of ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the request took longer than its timeout")
    return left if timeout is None else min(timeout, left)


# What one write hands the socket at most before the time left is looked at again.
WRITE_PIECE_BYTES = 16 * 1024


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(
            max_bytes, _time_left(self._deadline, timeout, httpcore.ReadTimeout)
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # A piece at a time, each given the time left then: httpcore gives every send of one
        # write the timeout it was handed, so a server taking a large body in a little at a
        # time held the request until it had taken all of it, however long past the deadline.
        for start in range(0, len(buffer), WRITE_PIECE_BYTES):
            self._inner.write(
                buffer[start : start + WRITE_PIECE_BYTES],
                _time_left(self._deadline, timeout, httpcore.WriteTimeout),
            )

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """A network backend whose streams give each connect, TLS handshake, write and read
    the time left before ``deadline`` at most (and their own timeout when it is shorter):
    the deadline bounds a whole attempt, connecting, sending, the status line and headers,
    and the body.

    Each socket operation is given the time left rather than cut off from another thread
    (a timer closing the connection): the thread that waits is the one that gives up, with
    httpx's own ReadTimeout/ConnectTimeout, and no timer thread, lock or half-closed
    connection is left behind. A server can hold an attempt a read's worth (or a send's of
    a ``WRITE_PIECE_BYTES`` piece) past the deadline at most, and that is itself cut to the
    time left."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(self._deadline, timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(
            host, port, timeout=left, local_address=local_address, socket_options=socket_options
        )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(self._deadline, timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_unix_socket(path, timeout=left, socket_options=socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def resolve(host: str, port: int, *, timeout: float | None) -> list[Any]:
    """``socket.getaddrinfo``, given up after ``timeout`` (TimeoutError, an OSError): a
    resolver slow to answer (5 s a server and try, by default) held a request past its
    time, which no socket timeout bounds. A lookup given up finishes in its own thread."""
    answer: dict[str, Any] = {}

    def look_up() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:
            answer["error"] = exc

    thread = threading.Thread(target=look_up, name="bounded-dns", daemon=True)
    thread.start()
    thread.join(None if timeout is None else max(timeout, 0))
    if thread.is_alive():
        raise TimeoutError(f"no answer from the resolver within {max(timeout or 0, 0):.1f} s")
    if "error" in answer:
        raise answer["error"]
    infos: list[Any] = answer["infos"]
    return infos


def addresses_of(host: str, port: int, *, timeout: float | None) -> list[str]:
    """``host``'s addresses, looked up within ``timeout`` (``resolve``); a name that does not
    resolve in time is a ConnectError, a failed attempt like a refused connection."""
    try:
        infos = resolve(host, port, timeout=timeout)
    except OSError as exc:
        raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from exc
    return [str(info[4][0]) for info in infos]


class AddressedBackend(httpcore.NetworkBackend):
    """Connects to the addresses ``addresses`` gives for the host (by default all of its
    own, looked up within the connection's timeout: httpcore's own connection,
    ``socket.create_connection``, looks the name up with no timeout at all, so a slow
    resolver held a request past its deadline), each in turn within the time left, as a
    plain connection does: a dual-stack host whose first address does not answer (IPv6 on
    a machine with no IPv6 route) is reached at the next. TLS still verifies the URL's host
    name: httpcore takes the server name from the request, not from the address."""

    def __init__(
        self,
        inner: httpcore.NetworkBackend,
        addresses: Callable[..., list[str]] = addresses_of,
    ) -> None:
        self._inner = inner
        self._addresses = addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        ends = None if timeout is None else time.monotonic() + timeout
        failure: Exception = httpcore.ConnectError(f"{host} resolves to no address")
        for address in dict.fromkeys(self._addresses(host, port, timeout=timeout)):
            left = None if ends is None else ends - time.monotonic()
            if left is not None and left <= 0:
                raise httpcore.ConnectTimeout(f"the time was up connecting to {host}")
            try:
                return self._inner.connect_tcp(
                    address,
                    port,
                    timeout=left,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class ProxyUnusable(Exception):
    """The environment names a proxy httpx cannot use: no request can be sent."""


def client_within(deadline: float, **options: Any) -> httpx.Client:
    """An httpx client as httpx makes it (its environment's proxies honoured: an egress
    proxy, NO_PROXY), each of whose connections, direct or through a proxy, works within
    ``deadline`` (``time.monotonic()``): its network backends are ``DeadlineBackend``'s,
    and each looks a name up within that time too (``AddressedBackend``).

    httpx takes a proxy from the environment only when it makes its transports itself, so
    their network backends are wrapped once made (attributes of httpx's and httpcore's own:
    the upstream and webhook tests that drip an answer fail if they move)."""
    try:
        client = httpx.Client(**options)
    except (ImportError, ValueError) as exc:
        # A proxy in the environment httpx cannot use (socks5:// without its extra, a scheme
        # it does not know): nothing was sent.
        raise ProxyUnusable(f"the environment's proxy cannot be used: {exc}"[:300]) from exc
    for transport in (client._transport, *client._mounts.values()):
        if isinstance(transport, httpx.HTTPTransport):
            pool = transport._pool
            pool._network_backend = DeadlineBackend(
                AddressedBackend(pool._network_backend), deadline
            )  # type: ignore[attr-defined]
    return client


@dataclass(frozen=True)
class Fetched:
    """What ``get`` got: the status, and the body (read only for a 200)."""

    status: int
    body: bytes = b""
    truncated: bool = False  # there was more than ``limit``


def get(
    url: str, *, headers: dict[str, str], timeout: float, limit: int, **options: Any
) -> Fetched:
    """A document fetched within ``timeout`` as a whole (``client_within``), no redirects
    followed, its body read up to ``limit`` (``read``) when it answered 200. ``options``
    go to the client (``verify``). Raises ``ProxyUnusable``, or ``httpx.HTTPError`` when
    it got no answer or one it could not read."""
    deadline = time.monotonic() + timeout
    sent = {k: v for k, v in headers.items() if k.lower() != "accept-encoding"}
    sent["Accept-Encoding"] = ACCEPT_ENCODING
    client = client_within(deadline, timeout=timeout, follow_redirects=False, **options)
    with client, client.stream("GET", url, headers=sent) as response:
        if response.status_code != 200:
            return Fetched(response.status_code)
        body, truncated = read(response, limit=limit, deadline=deadline)
    return Fetched(200, body, truncated)


class AnswerTooLarge(httpx2.ReadError):
    """An answer went past the bytes it may have; it was not read further."""


class CappedTransport(httpx2.AsyncBaseTransport):
    """An asynchronous transport whose answers end in ``AnswerTooLarge`` past ``limit``
    bytes each (an event stream counts as one answer), counted inflated: a compressed
    answer is inflated here, a bounded piece at a time, and handed on decoded."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)  # an async transport's
        try:
            inflater = Inflater.of(response.headers.get_list("content-encoding", True))
        except AnswerUnreadable as exc:
            await response.aclose()
            raise httpx2.DecodingError(str(exc), request=request) from None
        # Decoded here, so httpx2 must not decode it again (it would, whole, by the header).
        response.headers.pop("content-encoding", None)
        content_type = response.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() == "text/event-stream":
            # An event stream is always UTF-8 (WHATWG): read by a charset the server named
            # (utf-16, idna), the MCP client lost the result of a call that ran.
            response.headers["content-type"] = "text/event-stream"
        response.stream = _CappedStream(response.stream, self._limit, request, inflater)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(
        self,
        inner: httpx2.AsyncByteStream,
        limit: int,
        request: httpx2.Request,
        inflater: Inflater | None = None,
    ):
        self._inner = inner
        self._limit = limit
        self._request = request
        self._inflater = inflater

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        mender = SurrogateMender()
        # What UTF-8 cannot decode (Latin-1 text, a string cut through a character) as
        # U+FFFD, as an event stream's text is read: the SDK's JSON parser refused a whole
        # answer for one such byte, and a call that ran lost its result.
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for raw in self._inner:
            try:
                inflated = (
                    self._inflater.inflate(raw, at_most=self._limit + 1 - seen)
                    if self._inflater
                    else raw
                )
            except httpx.DecodingError as exc:
                raise httpx2.DecodingError(str(exc), request=self._request) from None
            chunk = utf8.decode(inflated).encode()
            seen += len(chunk)
            if seen > self._limit:
                raise AnswerTooLarge(
                    f"the answer is larger than {self._limit} bytes", request=self._request
                )
            if mended := mender.feed(chunk):
                yield mended
        if rest := mender.feed(utf8.decode(b"", final=True).encode()) + mender.end():
            yield rest

    async def aclose(self) -> None:
        await self._inner.aclose()


# A ``\u`` escape of a surrogate pair, or of a half (what looks like one: its backslash
# may be escaped itself, see ``_mended``).
_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)
# An escape left open at the end of a chunk, which the next may complete into another: a
# backslash alone, "\u" with fewer than four digits, or a high half with what may be the
# start of its low half (after an even run of backslashes: where an escape starts).
_OPEN_AT_END = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\(?:u[0-9a-fA-F]{0,3})?"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\(?:u[0-9a-fA-F]{0,3})?)?)\Z"
)


def _mended(data: bytes) -> bytes:
    """``data`` (which starts where an escape may) with each lone half as U+FFFD's escape."""
    pieces: list[bytes] = []
    done = 0
    for found in _SURROGATE.finditer(data):
        at = found.start()
        before = at
        while before > 0 and data[before - 1] == 0x5C:  # the backslashes before it
            before -= 1
        if (at - before) % 2 == 0:
            if len(found[0]) == 12:
                continue  # a pair, as it should be
        elif len(found[0]) == 12:
            at += 6  # an escaped backslash and text, then a low half alone
        else:
            continue  # an escaped backslash and text
        pieces += (data[done:at], rb"\ufffd")
        done = at + 6
    return b"".join((*pieces, data[done:])) if pieces else data


class SurrogateMender:
    """JSON text (a message, an event stream of messages) streamed through, each ``\\u``
    escape of a lone surrogate written as U+FFFD's. A string cut between the two halves of
    an emoji (JavaScript's ``slice`` does) is written so by JSON.stringify and json.dumps,
    and is valid JSON; the MCP SDK's parser refuses it, and a call that ran lost its result
    (as an HTTP answer, it is kept: ``core.json_values.storable``). An escape left open at a
    chunk's end is held back until the next chunk: 11 bytes at most."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        data, self._held = self._held + data, b""
        # From the start of the run of backslashes the last 12 bytes start in.
        start = max(len(data) - 12, 0)
        start = len(data[:start].rstrip(b"\\"))
        if left_open := _OPEN_AT_END.search(data, start):
            data, self._held = data[: left_open.start(1)], data[left_open.start(1) :]
        return _mended(data)

    def end(self) -> bytes:
        data, self._held = self._held, b""
        return _mended(data)
