"""libpq's own trace of the protocol, to count the round trips a piece of code makes: one
ReadyForQuery message answers each exchange the client waits on (a simple query, or a
pipeline's sync)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection
from psycopg import pq


class Trace:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    @property
    def round_trips(self) -> int:
        return sum(1 for line in self.lines if "\tReadyForQuery\t" in line)

    def sent(self, word: str) -> int:
        """Statements the client sent that start with ``word`` (simple or extended)."""
        return sum(
            1
            for line in self.lines
            if line.startswith("F")
            and ("\tQuery\t" in line or "\tParse\t" in line)
            and f'"{word}' in line
        )


@contextmanager
def traced() -> Iterator[list[Trace]]:
    """libpq's protocol trace of this thread's connection while the block runs (in the list
    it yields once the block is over)."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    found: list[Trace] = []
    with tempfile.TemporaryFile() as file:
        pgconn.trace(file.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield found
        finally:
            pgconn.untrace()
            file.seek(0)
            found.append(Trace(file.read().decode()))
