"""What an operator does to a running query from a session of their own."""

from __future__ import annotations

import time

from django.db import connection, connections


def this_backend() -> int:
    """The PostgreSQL backend of this thread's connection."""
    return int(connection.cursor().connection.info.backend_pid)


def cancel_from_another_session(backend: int) -> None:
    """``pg_cancel_backend`` from another connection, as an operator (or a statement
    timeout) would stop a query; then a moment for the cancel to land."""
    other = connections["default"].copy()
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_cancel_backend(%s)", [backend])
    finally:
        other.close()
    time.sleep(0.3)
