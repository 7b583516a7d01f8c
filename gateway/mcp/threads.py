"""Django's database code, called from the MCP server's async handlers.

Each call runs in a worker thread as a request of its own: the thread's connection is
checked before and handed back after (to the pool, in services mode), exactly as Django
does around an HTTP request. Django refuses database access from async code, so nothing
can reach the database around this door by mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections


def _as_request[T](fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def run_sync[T](fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, with its own database connection."""
    return await sync_to_async(partial(_as_request, fn, *args, **kwargs), thread_sensitive=False)()
