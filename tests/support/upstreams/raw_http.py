"""A plain HTTP/1.1 server in a thread, for the answers a real server would never give on
purpose (a gateway's 502 after the effect, a body dripped a byte at a time, a credential
quoted back): ``answer(handler, body)`` answers every POST (and every GET, with an empty
body, when ``gets`` is set: a service an upstream's document points at)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[BaseHTTPRequestHandler, bytes], None]


def reply(
    handler: BaseHTTPRequestHandler, status: int, body: Any, ctype: str = "application/json"
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", ctype)
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def bare_post(
    base_url: str,
    *,
    path: str = "/p",
    upstream_headers: list[tuple[str, str]] | None = None,
    timeout: float = 5,
) -> Any:
    """An HTTP upstream's call of a POST with no parameters, no body and no idempotency
    header, through ``upstream_http.call``: what a test of how an answer is read needs."""
    from tools_registry.upstreams import http as upstream_http

    return upstream_http.call(
        operation={"method": "POST", "path": path, "parameters": [], "body": None},
        base_url=base_url,
        upstream_headers=upstream_headers or [],
        idempotency_header="",
        key="k",
        arguments={},
        timeout=timeout,
    )


def drip_headers(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """A status line, then a header a byte every 0.3 s for 12 s: each byte well within any
    read timeout, the answer never within a short one."""
    try:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(40):
            handler.wfile.write(b"X")
            handler.wfile.flush()
            time.sleep(0.3)
    except (BrokenPipeError, ConnectionResetError):
        pass


class RawHttpServer:
    def __init__(self, answer: Answer, *, gets: bool = False) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                answer(self, self.rfile.read(int(self.headers.get("content-length") or 0)))

            if gets:

                def do_GET(self) -> None:
                    answer(self, b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
