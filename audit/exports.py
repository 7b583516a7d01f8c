"""Streaming exports of a filtered view of the trail: CSV and JSON Lines.

Rows come in chain order (``seq``; events not yet sealed last) with ``seq``, ``prev_hash``
and ``hash``, so a third party can recompute every link with ``audit/verify_export.py``
(standard library only; the workspace serves it).

On PostgreSQL the rows are formatted by the server, and the web process only passes its
bytes on, one block at a time whatever the row count: CSV through ``COPY ... TO STDOUT``,
JSON Lines as one ``bytea`` line per row, read in chunks (see ``_stream_lines``). Elsewhere
(SQLite, the embedded mode) a chunked cursor feeds ``csv``/``json``. ``occurred_at`` is
written exactly as the chain hashed it (``canonical.instant``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Generator, Iterator
from typing import Any, cast

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connection, transaction
from django.db.models import F, QuerySet
from psycopg import Cursor
from psycopg.errors import QueryCanceled

from audit.canonical import INSTANT_SQL, instant
from audit.chain import EVENT_COLUMNS, with_data_text
from audit.models import AuditEvent

COLUMNS = ("seq", "prev_hash", "hash", *EVENT_COLUMNS, "data", "sealed_at")
# In JSON Lines, data comes last so that its text (what the chain hashed, byte for byte) is
# everything after the line's first ', "data" : ' up to the final brace.
JSONL_COLUMNS = (*(c for c in COLUMNS if c != "data"), "data")
DATA_KEY = ', "data" : '
# Free-text cells a spreadsheet could take for a formula (=, +, -, @ ...). In CSV such a
# cell is prefixed with "'"; verify_export.py removes exactly one leading "'" again.
FORMULA_GUARDED = ("outcome", "actor_label", "agent_name", "tool_name", "session_id")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")

CHUNK_BYTES = 64 * 1024
# JSON Lines: rows per chunk read from PostgreSQL and per block sent (~860 bytes a row).
# Larger chunks were no faster (bench/bench_audit_export.py) and add to the worker's memory.
FETCH_ROWS = 500
# JSON Lines values that are JSON strings (or null): each run of them between the others is
# written by one json_object() call (see _jsonl_line).
JSONL_STRINGS = frozenset(
    {
        "prev_hash",
        "hash",
        "occurred_at",
        "action",
        "outcome",
        "actor_type",
        "actor_id",
        "actor_label",
        "agent_name",
        "tool_name",
        "session_id",
        "call_id",
    }
)


def _where(events: QuerySet[AuditEvent]) -> tuple[str, list[Any]]:
    """The view's WHERE clause, compiled by Django: the export filters exactly like the page."""
    query = events.query
    if query.is_empty():
        return "WHERE false", []
    try:
        sql, params = query.get_compiler(using=events.db).compile(query.where)
    except FullResultSet:  # no filter at all
        return "", []
    except EmptyResultSet:
        return "WHERE false", []
    return (f"WHERE {sql}", list(params)) if sql else ("", [])


def _select_sql(events: QuerySet[AuditEvent], fmt: str) -> tuple[str, list[Any]]:
    """The view's rows in chain order, formatted by PostgreSQL: CSV cells, or one JSON
    object per row (whose text is PostgreSQL's own: ``to_json``, ``data`` as hashed)."""
    where, params = _where(events)
    order = "ORDER BY seq ASC NULLS LAST, id ASC"
    if fmt == "csv":
        selected = []
        for column in COLUMNS:
            if column == "occurred_at":
                selected.append(f"{INSTANT_SQL} AS occurred_at")
            elif column in FORMULA_GUARDED:
                # The first character's code point (0 for an empty cell): comparing
                # integers costs less than cutting a one-character string from each cell.
                starts = ", ".join(str(ord(c)) for c in FORMULA_STARTS)
                selected.append(
                    f"CASE WHEN ascii({column}) IN ({starts}) THEN '''' || {column}"
                    f" ELSE {column} END AS {column}"
                )
            elif column == "sealed_at":
                selected.append(
                    "to_char(sealed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS sealed_at"
                )
            else:
                selected.append(column)
        select = ", ".join(selected)
    else:
        select = _jsonl_line()
    # Only constants and Django's compiled WHERE (values stay parameters) go into the SQL.
    return f"SELECT {select} FROM audit_auditevent {where} {order}", params  # noqa: S608


def _jsonl_line() -> str:
    """One row's JSON Lines text as a ``bytea`` expression, e.g.

        {"seq" : 7, "prev_hash" : "...", "hash" : "...", "id" : 9, "occurred_at" : "...",
         ..., "call_id" : null, "sealed_at" : "...", "data" : {...}}

    keys in ``JSONL_COLUMNS`` order, ``" : "`` and ``", "`` between them (the separators
    json_object() writes, which every earlier export had), ``data`` as its jsonb text.

    Each run of string values is one ``json_object(keys, values)`` call, which escapes them
    all into one buffer (a NULL value becomes ``null``), where ``to_json()`` on each column
    looks up the column's type and copies its text twice every time: the line costs the
    server about 15 % less (bench/bench_audit_export.py, docs/benchmarks.md). The call's braces are cut off as bytes: its text always starts
    with ``{"`` and ends with ``"}`` or ``l}``, so ``btrim`` of the bytes ``{`` and ``}``
    removes exactly one at each end. Byte functions, because the text ones count characters
    from the start of a UTF-8 string. ``textsend`` gives a text's bytes in the client's
    encoding, which Django sets to UTF-8.
    """
    pieces: list[str] = []  # bytea expressions
    text: list[str] = []  # text expressions, joined into the next piece
    strings: list[str] = []  # the current run of string values

    def end_text() -> None:
        if text:
            pieces.append(f"textsend({' || '.join(text)})")
            text.clear()

    def end_strings() -> None:
        if strings:
            end_text()
            keys = ",".join(strings)
            values = ", ".join(
                INSTANT_SQL if c == "occurred_at" else "call_id::text" if c == "call_id" else c
                for c in strings
            )
            pieces.append(
                f"btrim(textsend(json_object('{{{keys}}}'::text[], ARRAY[{values}])::text),"
                " '\\x7b7d'::bytea)"
            )
            strings.clear()

    for column in JSONL_COLUMNS:
        separator = "', '" if pieces or text or strings else "'{'"
        if column in JSONL_STRINGS:
            if not strings:
                text.append(separator)
            strings.append(column)
            continue
        end_strings()
        if column in ("seq", "id"):
            value = f"coalesce({column}::text, 'null')"
        elif column == "data":
            value = "data::text"
        else:  # sealed_at: a JSON string in to_json's format, or null
            value = f"coalesce(to_json({column})::text, 'null')"
        text += [separator, f"'\"{column}\" : '", value]
    end_strings()
    text.append("'}'")
    end_text()
    return " || ".join(pieces)


def _copy_sql(events: QuerySet[AuditEvent]) -> tuple[str, list[Any]]:
    query, params = _select_sql(events, "csv")
    return f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)", params


def _stream_copy(events: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """CSV, streamed by COPY (whose CSV quoting is PostgreSQL's, in C)."""
    sql, params = _copy_sql(events)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: Django's wrapper has no copy()
        statement = raw.mogrify(sql, params) if params else sql
        cancelled = False
        try:
            with raw.copy(statement) as copy:
                try:
                    # COPY hands over one row per message; send the client ~64 KB at a
                    # time, not a write (and a chunk header) per row.
                    pending: list[bytes] = []
                    size = 0
                    for block in copy:
                        pending.append(bytes(block))
                        size += len(block)
                        if size >= CHUNK_BYTES:
                            yield b"".join(pending)
                            pending, size = [], 0
                    if pending:
                        yield b"".join(pending)
                except GeneratorExit:
                    # The client went away mid-download. Outside a transaction, cancel the
                    # COPY (the server stops at once); inside one, a cancel would abort the
                    # caller's transaction, so read the rest and drop it.
                    if connection.get_autocommit():
                        cancelled = True
                        raw.connection.cancel_safe()
                    for _ in copy:
                        pass
                    raise
        except QueryCanceled:
            # Only the cancel sent just above ends the file quietly. Any other (a statement
            # timeout, an operator's cancel) would leave a file that looks whole and is not:
            # the download fails instead, as a JSON Lines export does.
            if not cancelled:
                raise


def _stream_lines(events: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """JSON Lines: each line made by PostgreSQL, passed on as the bytes it sent.

    Not COPY: COPY hands over each row as a message of its own, which psycopg reads with a
    Python call per row. Here the rows arrive FETCH_ROWS at a time (libpq's chunked rows),
    as ``bytes`` (a bytea in a binary result), and leave joined, FETCH_ROWS lines a block.
    """
    sql, params = _select_sql(events, "jsonl")
    # Our own transaction (the view runs in autocommit), so that SET LOCAL ends with it; in
    # a caller's transaction a savepoint, so that a query cancelled midway (below) aborts
    # only the savepoint.
    with transaction.atomic(), connection.cursor() as cursor:
        # The planner picks a parallel plan for this query. Measured, it was slower (one
        # worker merging ordered rows back into one stream) and cost about 15 % more CPU,
        # which the machine's other web and Celery workers pay for.
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        statement = cursor.cursor.mogrify(sql, params) if params else sql
        lines = cast(  # stream() is a generator: closing it ends the query
            "Generator[tuple[bytes]]",
            Cursor(cursor.cursor.connection).stream(statement, binary=True, size=FETCH_ROWS),
        )
        try:
            block: list[bytes] = []
            for (line,) in lines:
                block.append(line)
                if len(block) == FETCH_ROWS:
                    yield b"\n".join(block) + b"\n"
                    block = []
            if block:
                yield b"\n".join(block) + b"\n"
        finally:
            # When the client went away mid-download (GeneratorExit), psycopg cancels the
            # rest of the query; atomic() then rolls back what the cancel aborted.
            lines.close()


def _portable_rows(events: QuerySet[AuditEvent]) -> Iterator[dict[str, Any]]:
    ordered = (
        with_data_text(events)
        .order_by(F("seq").asc(nulls_last=True), "id")
        .values_list(*(c if c != "data" else "data_text" for c in COLUMNS))
    )
    for row in ordered.iterator(chunk_size=2000):
        item = dict(zip(COLUMNS, row, strict=True))
        item["occurred_at"] = instant(item["occurred_at"])
        item["call_id"] = str(item["call_id"]) if item["call_id"] else None
        item["sealed_at"] = instant(item["sealed_at"]) if item["sealed_at"] else None
        yield item


def _stream_portable(events: QuerySet[AuditEvent], fmt: str) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(COLUMNS)
    for count, item in enumerate(_portable_rows(events), start=1):
        if writer is not None:
            for column in FORMULA_GUARDED:
                if str(item[column]).startswith(FORMULA_STARTS):
                    item[column] = "'" + item[column]
            writer.writerow(["" if item[c] is None else item[c] for c in COLUMNS])
        else:
            data_text = item.pop("data")
            head = json.dumps(item, ensure_ascii=False, separators=(", ", " : "))
            buffer.write(f"{head[:-1]}{DATA_KEY}{data_text}}}\n")
        if count % 500 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def stream(events: QuerySet[AuditEvent], fmt: str) -> Iterator[bytes]:
    """The filtered events as ``fmt`` ("csv" or "jsonl"), block by block."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r}")
    if connection.vendor == "postgresql":
        return _stream_copy(events) if fmt == "csv" else _stream_lines(events)
    return _stream_portable(events, fmt)
