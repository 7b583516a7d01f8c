"""Streaming exports of a filtered view of the trail: CSV and JSON Lines.

Rows come in chain order (``seq``; events not yet sealed last) with ``seq``, ``prev_hash``
and ``hash``, so a third party can recompute every link with ``audit/verify_export.py``
(standard library only; the workspace serves it).

On PostgreSQL the rows are formatted by the server and streamed with ``COPY ... TO STDOUT``:
the web process holds one block of bytes at a time, whatever the row count, and the rate
is COPY's own. Elsewhere (SQLite, the embedded mode) a chunked cursor feeds ``csv``/``json``.
``occurred_at`` is written exactly as the chain hashed it (``canonical.instant``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connection
from django.db.models import F, QuerySet
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


def _copy_sql(events: QuerySet[AuditEvent], fmt: str) -> tuple[str, list[Any]]:
    where, params = _where(events)
    order = "ORDER BY seq ASC NULLS LAST, id ASC"
    if fmt == "csv":
        selected = []
        for column in COLUMNS:
            if column == "occurred_at":
                selected.append(f"{INSTANT_SQL} AS occurred_at")
            elif column in FORMULA_GUARDED:
                starts = ", ".join(
                    f"'{c}'" if c not in "\t\r'" else _sql_char(c) for c in FORMULA_STARTS
                )
                selected.append(
                    f"CASE WHEN left({column}, 1) IN ({starts}) THEN '''' || {column}"
                    f" ELSE {column} END AS {column}"
                )
            elif column == "sealed_at":
                selected.append(
                    "to_char(sealed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS sealed_at"
                )
            else:
                selected.append(column)
        select = ", ".join(selected)
        options = "FORMAT csv, HEADER"
    else:
        # Concatenated by hand: json_build_object costs about half again as much per row.
        parts: list[str] = []
        for column in JSONL_COLUMNS:
            if column in ("seq", "id"):
                value = f"coalesce({column}::text, 'null')"
            elif column == "occurred_at":
                value = f"'\"' || {INSTANT_SQL} || '\"'"
            elif column == "data":
                value = "data::text"
            else:
                value = f"coalesce(to_json({column})::text, 'null')"
            parts.append(f"'{', ' if parts else '{'}\"{column}\" : ' || {value}")
        select = " || ".join(parts) + " || '}'"
        # CSV mode with a quote and delimiter that JSON text never holds raw (it escapes
        # every control character), so each line is the JSON object byte for byte.
        options = "FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02'"
    # Only constants and Django's compiled WHERE (values stay parameters) go into the SQL.
    statement = f"COPY (SELECT {select} FROM audit_auditevent {where} {order}) TO STDOUT"  # noqa: S608
    return f"{statement} WITH ({options})", params


def _sql_char(char: str) -> str:
    return {"\t": "E'\\t'", "\r": "E'\\r'", "'": "''''"}[char]


def _stream_copy(events: QuerySet[AuditEvent], fmt: str) -> Iterator[bytes]:
    sql, params = _copy_sql(events, fmt)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: Django's wrapper has no copy()
        statement = raw.mogrify(sql, params) if params else sql
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
                        raw.connection.cancel_safe()
                    for _ in copy:
                        pass
                    raise
        except QueryCanceled:
            pass


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
        return _stream_copy(events, fmt)
    return _stream_portable(events, fmt)
