"""Whether the client of a request is still there to read its answer.

A long-poll (``gateway.longpoll``) holds a web thread and one of its agent's places for up
to a minute; one whose client hung up (a timeout of its own, a process that died, a proxy
that gave up) should give them back at once, not at its deadline. ``detector(request)`` is
a check cheap enough to ask every second while the request waits:

* under uvicorn (``config.asgi``, the way Countersign is served) ``HangUpWatch``, in front
  of the WSGI bridge, hands each request a watch: asked for the first time, it reads the
  request's ASGI messages on the event loop until ``http.disconnect`` (the body came
  whole before it starts, so it takes nothing the view would read);
* under gunicorn (``config.wsgi``) the request's socket is in the environ: a peer that
  closed its side makes it readable with nothing to read (a non-blocking peek);
* elsewhere (gunicorn terminating TLS itself, another WSGI server, Django's test client)
  a hang-up cannot be seen, and the check always says the client is there.

Behind a proxy, the hang-up seen is the proxy's: nginx closes its connection upstream when
its client goes away (unless ``proxy_ignore_client_abort`` is on); a proxy that keeps it
open keeps the long-poll waiting to its deadline.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial

from django.http import HttpRequest
from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "countersign.hang_up_watch"


class _Watch:
    """Reads a request's remaining ASGI messages on its event loop, from the first time a
    view asks, until the server says the client is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Receive) -> None:
        self._loop = loop
        self._receive = receive
        self._gone = threading.Event()
        self._reading: Future[None] | None = None
        self._lock = threading.Lock()

    def start(self) -> Callable[[], bool]:
        """Called from the view's thread; returns the check."""
        with self._lock:
            if self._reading is None:
                self._reading = asyncio.run_coroutine_threadsafe(self._read(), self._loop)
        return self._gone.is_set

    async def _read(self) -> None:
        # uvicorn answers ``http.disconnect`` when the client goes away, and also once the
        # response is complete: either way this ends with the request.
        while (await self._receive())["type"] != "http.disconnect":
            pass  # the rest of a body the view did not read
        self._gone.set()

    def stop(self) -> None:
        with self._lock:
            if self._reading is not None:
                self._reading.cancel()


class HangUpWatch:
    """ASGI middleware: gives each HTTP request a watch (``SCOPE_KEY`` of its scope, which
    a2wsgi passes on as ``environ["asgi.scope"]``), stopped when the request ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = _Watch(asyncio.get_running_loop(), receive)
        try:
            await self.app({**scope, SCOPE_KEY: watch}, receive, send)
        finally:
            watch.stop()


def detector(request: HttpRequest) -> Callable[[], bool]:
    """A check of whether ``request``'s client hung up; one that always says no where the
    server does not let that be seen."""
    scope = request.META.get("asgi.scope")
    watch = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    if isinstance(watch, _Watch):
        _ = request.body  # the body, read whole first: the watch reads only what follows
        return watch.start()
    sock = request.META.get("gunicorn.socket")
    if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
        return partial(_closed, sock)
    return _never


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed the connection: readable, with nothing to read. A request
    it sent next (pipelined) is data, and says it is still there."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # nothing sent, and still open
    except OSError:
        return True  # reset, or no longer connected


def _never() -> bool:
    return False
