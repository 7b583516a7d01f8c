"""The check the psycopg pool makes of a connection before it lends it to a request."""

from __future__ import annotations

import select
from typing import Any

from psycopg_pool import ConnectionPool


def check_connection(conn: Any) -> None:
    """Raises for a connection the server closed (a restart, a failover, an administrator's
    ``pg_terminate_backend``): the pool then drops it and lends another. When one is found,
    every other idle connection of the pool is checked at once, and the broken ones
    replaced: the restart cut them all, and the pool, which waits after each broken one it
    finds (1 s, 2 s, 4 s ...), kept a request waiting past ``DB_POOL_TIMEOUT`` behind a few.

    Unchecked, each such connection was lent to a request, which failed. A connection is
    asked (the pool's own check, one empty query) only when something waits to be read on
    it: an idle live connection has nothing to say, and one the server closed has its
    goodbye and the end of its stream waiting. A lent connection costs no round trip."""
    if not _has_input(conn):
        return
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        pool = getattr(conn, "_pool", None)  # psycopg_pool's own link from a lent connection
        if isinstance(pool, ConnectionPool):
            pool.check()
        raise


def _has_input(conn: Any) -> bool:
    try:
        waiting = select.poll()
        waiting.register(conn.fileno(), select.POLLIN)
        return bool(waiting.poll(0))  # readable, hung up or in error
    except Exception:
        return True  # no socket left: the pool's check says so
