"""Django's database code, called from the MCP server's async handlers.

Each call runs in a worker thread as a request of its own: the thread's connection is
checked before and handed back after (to the pool, in services mode), exactly as Django
does around an HTTP request. Django refuses database access from async code, so nothing
can reach the database around this door by mistake.

The threads are a pool of their own, ``MCP_THREADS`` per process, not the event loop's
default executor: that one holds ``min(32, CPUs + 4)`` threads (6 on 2 cores), which a
handful of reads waiting for a slow upstream filled, holding up every other /mcp request
of the process (other agents' token checks and listings, the short reads that end waits)
until one of them ended. A read gives its database connection back to the pool while its
upstream takes its time (``runner.execute``), so slow reads hold threads, not connections.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections


@cache
def _pool() -> ThreadPoolExecutor:
    """This process's threads for /mcp's Django work (started as they are needed)."""
    return ThreadPoolExecutor(
        max_workers=settings.MCP_THREADS, thread_name_prefix="countersign-mcp"
    )


def _as_request[T](fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def run_sync[T](fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in one of the ``MCP_THREADS`` threads, with its own database
    connection."""
    work = partial(_as_request, fn, *args, **kwargs)
    return await sync_to_async(work, thread_sensitive=False, executor=_pool())()
