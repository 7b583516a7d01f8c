"""A minimal MCP server over plain HTTP (JSON answers), for the answers a real server's SDK
would never give on purpose: a gateway's 502 after the tool ran, a stream that ends before
the result. ``answer(handler, message)`` answers each ``tools/call``; every call received
is in ``calls`` (the effect happened when it is there)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


def reply(
    handler: BaseHTTPRequestHandler, status: int, body: Any, ctype: str = "application/json"
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", ctype)
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class RawMcpServer:
    def __init__(self, answer: Answer) -> None:
        self.calls: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                message = json.loads(self.rfile.read(length))
                method = message.get("method")
                if method == "initialize":
                    reply(self, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {
                        "protocolVersion": message["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "raw", "version": "1"},
                    }})  # fmt: skip
                elif "id" not in message:
                    reply(self, 202, b"")
                elif method == "tools/call":
                    outer.calls.append(message["params"])
                    answer(self, message)
                else:
                    reply(self, 200, {"jsonrpc": "2.0", "id": message["id"], "result": {}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mcp"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
