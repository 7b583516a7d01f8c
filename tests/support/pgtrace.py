"""libpq's own trace of the protocol, to count the round trips a piece of code makes: one
ReadyForQuery message answers each exchange the client waits on (a simple query, or a
pipeline's sync)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO

from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from psycopg import pq


class Trace:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    @property
    def round_trips(self) -> int:
        """The exchanges the client waited on, but a statement's preparation: psycopg
        prepares each of ``core.db``'s statements once per connection, in an exchange of its
        own, and which of the pool's connections (each prepared the first time it runs the
        statement) a request borrows is the pool's choice."""
        return sum(1 for lines in self.exchanges() if not _prepares_only(lines))

    def exchanges(self) -> list[list[str]]:
        """The trace's lines, cut after each ReadyForQuery: one list per wait on the server."""
        found: list[list[str]] = [[]]
        for line in self.lines:
            found[-1].append(line)
            if "\tReadyForQuery\t" in line:
                found.append([])
        return [lines for lines in found if lines]

    def sent(self, word: str) -> int:
        """Statements the client sent that start with ``word`` (simple or extended)."""
        return sum(
            1
            for line in self.lines
            if line.startswith("F")
            and ("\tQuery\t" in line or "\tParse\t" in line)
            and f'"{word}' in line
        )


def _prepares_only(exchange: list[str]) -> bool:
    """The client sent only the Parse of named statements (and the Sync that ends it)."""
    sent = [line.split("\t")[2] for line in exchange if line.startswith("F")]
    named = [line for line in exchange if line.startswith("F") and "\tParse\t" in line]
    return (
        set(sent) <= {"Parse", "Sync"}
        and bool(named)
        and all('\tParse\t ""' not in line for line in named)
    )


@contextmanager
def traced() -> Iterator[list[Trace]]:
    """libpq's protocol trace of this thread's connection while the block runs (in the list
    it yields once the block is over), then one of each other connection the thread borrows
    from the pool meanwhile, in the order it borrowed them (a read gives its connection
    back while its tool runs, and borrows one again to store its result)."""
    connection.ensure_connection()
    found: list[Trace] = []
    followed: list[tuple[pq.abc.PGconn, IO[bytes]]] = []
    thread = threading.get_ident()

    files = ExitStack()

    def follow(pgconn: pq.abc.PGconn) -> None:
        if any(pgconn is seen for seen, _ in followed):
            return  # borrowed again: its trace goes on in its own file
        # A file each: libpq buffers each connection's trace on its own.
        file = files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed by files)
        pgconn.trace(file.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        followed.append((pgconn, file))

    def borrowed(sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
        if threading.get_ident() == thread:
            follow(connection.connection.pgconn)

    follow(connection.connection.pgconn)
    connection_created.connect(borrowed, weak=False)
    with files:
        try:
            yield found
        finally:
            connection_created.disconnect(borrowed)
            for pgconn, file in followed:
                pgconn.untrace()
                file.seek(0)
                found.append(Trace(file.read().decode()))
