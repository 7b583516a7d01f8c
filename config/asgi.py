"""The ASGI entry point: how Countersign is served, in both modes (``make run`` and
production, ``uvicorn config.asgi:application``).

``/mcp`` is the official MCP SDK's Streamable HTTP server, which is ASGI. Everything else
is Django's WSGI application, run in a pool of ``WEB_THREADS`` threads per process by
a2wsgi's bridge: Django's views are synchronous, and its own ASGI handler would run them
one at a time on a single thread (a long-polling agent would hold up every other
request). ``config.wsgi`` still serves everything but ``/mcp`` for WSGI servers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from starlette.applications import Starlette
from starlette.routing import Mount, Route

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_wsgi_application()  # sets Django up: the imports below need it

from gateway.hangups import HangUpWatch  # noqa: E402
from gateway.mcp.app import McpEndpoint  # noqa: E402

mcp = McpEndpoint()
# Every method: the endpoint answers those it does not serve (405 with Allow); routed for
# some only, the others fell through to Django's HTML 404 page.
routes: list[Route | Mount] = [Route("/mcp", mcp)]
lifespans: list[Any] = [mcp.lifespan]

if settings.SANDBOX_ENABLED:
    # The demo's ticketing system, an MCP server of its own (an upstream of the demo).
    from sandbox.tickets import tickets

    routes.append(
        Mount(
            "/sandbox/tickets", tickets.streamable_http_app(stateless_http=True, json_response=True)
        )
    )
    lifespans.append(tickets.session_manager.run)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for enter in lifespans:
            await stack.enter_async_context(enter())
        yield


application = Starlette(
    routes=[
        *routes,
        # A long-poll learns from HangUpWatch that its client went away (gateway.hangups).
        # a2wsgi's and Django's types disagree on how a WSGI app is spelled, not on what it is.
        Mount("/", HangUpWatch(WSGIMiddleware(django_application, workers=settings.WEB_THREADS))),  # type: ignore[arg-type]
    ],
    lifespan=lifespan,
)
