"""Reading an answer from a server Countersign does not control (an upstream, a webhook
receiver) within a size and a time.

httpx's timeout bounds each read, not the whole answer: a server sending a byte now and then
would hold a worker, or a web thread for a read call, without end, and one sending a
gigabyte would hold it in memory. ``read`` stops at ``limit`` bytes and at ``deadline``;
``CappedTransport`` does the same for the MCP client's asynchronous streams, which the SDK
reads itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import httpx2


def read(response: httpx.Response, *, limit: int, deadline: float) -> tuple[bytes, bool]:
    """(at most ``limit`` bytes of the body, whether there was more). Raises
    ``httpx.ReadTimeout`` once ``deadline`` (``time.monotonic()``) has passed."""
    raw = bytearray()
    for chunk in response.iter_bytes():
        raw += chunk
        if len(raw) > limit:
            return bytes(raw[:limit]), True
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer took longer than its timeout")
    return bytes(raw), False


class AnswerTooLarge(httpx2.ReadError):
    """An answer went past the bytes it may have; it was not read further."""


class CappedTransport(httpx2.AsyncBaseTransport):
    """An asynchronous transport whose answers end in ``AnswerTooLarge`` past ``limit``
    bytes each (an event stream counts as one answer)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)  # an async transport's
        response.stream = _CappedStream(response.stream, self._limit, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, request: httpx2.Request):
        self._inner = inner
        self._limit = limit
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise AnswerTooLarge(
                    f"the answer is larger than {self._limit} bytes", request=self._request
                )
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
