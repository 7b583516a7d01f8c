"""A minimal MCP server over plain HTTP (JSON answers), for the answers a real server's SDK
would never give on purpose: a gateway's 502 after the tool ran, a stream that ends before
the result. ``answer(handler, message)`` answers each ``tools/call``; every call received
is in ``calls`` (the effect happened when it is there)."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.upstreams.raw_http import RawHttpServer, reply

Answer = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


class RawMcpServer(RawHttpServer):
    """``tools``: what ``tools/list`` answers (each listing counted in ``lists``); an empty
    result without them. ``pages``: the result of ``tools/list`` for each cursor (None for
    the first page), for a listing in pages."""

    def __init__(
        self,
        answer: Answer,
        *,
        tools: list[dict[str, Any]] | None = None,
        pages: Callable[[str | None], dict[str, Any]] | None = None,
    ) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lists = 0

        def handle(handler: BaseHTTPRequestHandler, body: bytes) -> None:
            message = json.loads(body)
            method = message.get("method")
            if method == "initialize":
                reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
                    "protocolVersion": message["params"]["protocolVersion"],
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "raw", "version": "1"},
                }})  # fmt: skip
            elif "id" not in message:
                reply(handler, 202, b"")
            elif method == "tools/call":
                self.calls.append(message["params"])
                answer(handler, message)
            elif method == "tools/list" and tools is not None:
                self.lists += 1
                reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
                    "tools": tools}})  # fmt: skip
            elif method == "tools/list" and pages is not None:
                self.lists += 1
                page = pages((message.get("params") or {}).get("cursor"))
                reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": page})
            else:
                reply(handler, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {}})

        super().__init__(handle)
        self.url = f"{self.url}/mcp"
