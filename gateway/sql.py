"""The statements every agent submission runs on the edge's own tables, written once (see
``core.db``): composing them with the ORM cost more CPU than running them."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from django.db import connection

from core import db
from gateway.models import AgentSession, IdempotencyRecord, McpSession


def insert_key(
    *, agent_id: int, key: str, request_hash: str, now: datetime, locked_until: datetime
) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING``: whether this request inserted the key (the ORM
    has no such statement). Waits while another transaction holds an uncommitted insert of
    the same key."""
    return db.one(
        insert_key_statement(
            agent_id=agent_id,
            key=key,
            request_hash=request_hash,
            now=now,
            locked_until=locked_until,
        )
    )


def insert_key_statement(
    *, agent_id: int, key: str, request_hash: str, now: datetime, locked_until: datetime
) -> db.Statement[bool]:
    params = [
        agent_id,
        key,
        request_hash,
        str(IdempotencyRecord.State.IN_FLIGHT),
        db.db_time(now),
        db.db_time(locked_until),
    ]
    return db.Statement(_insert_key_sql(), params, _inserted)


def _inserted(cursor: Any) -> bool:
    return cursor.fetchone() is not None


@cache
def _insert_key_sql() -> str:
    def col(name: str) -> str:
        return db.column(IdempotencyRecord, name)

    names = ("agent", "key", "request_hash", "state", "created_at", "locked_until")
    return (
        f"INSERT INTO {db.table(IdempotencyRecord)} "  # noqa: S608 - the model's own names
        f"({', '.join(col(n) for n in names)}) VALUES ({', '.join(['%s'] * len(names))}) "
        f"ON CONFLICT ({col('agent')}, {col('key')}) DO NOTHING RETURNING {col('id')}"
    )


def complete_key(
    *,
    agent_id: int,
    key: str,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    call_id: UUID | None,
    now: datetime,
    stored: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Store the response a key replays; in a transaction, sent with its next statement
    or its COMMIT (``core.db.later``). ``stored`` gets the body as stored, when the
    statement's answer is read."""

    def read_stored(cursor: Any) -> None:
        row = cursor.fetchone()
        if stored is not None and row is not None:
            kept = json.loads(row[0]) if isinstance(row[0], str | bytes) else row[0]
            stored(kept["body"])

    db.later(
        db.Statement(
            _complete_key_sql(connection.vendor, returning=stored is not None),
            [
                str(IdempotencyRecord.State.COMPLETE),
                status,
                json.dumps({"body": body, "headers": headers}),
                *db.lookup_values(IdempotencyRecord, {"call": call_id}),
                db.db_time(now),
                agent_id,
                key,
            ],
            db.unread if stored is None else read_stored,
        )
    )


@cache
def _complete_key_sql(vendor: str, *, returning: bool) -> str:
    def col(name: str) -> str:
        return db.column(IdempotencyRecord, name)

    as_json = "%s::jsonb" if vendor == "postgresql" else "%s"  # SQLite stores JSON as text
    back = f" RETURNING {col('response_body')}" if returning else ""
    return (
        f"UPDATE {db.table(IdempotencyRecord)} SET {col('state')} = %s, "  # noqa: S608
        f"{col('response_status')} = %s, {col('response_body')} = {as_json}, "
        f"{col('call')} = %s, {col('completed_at')} = %s "
        f"WHERE {col('agent')} = %s AND {col('key')} = %s{back}"
    )


def count_round_statement(
    *, agent_id: int, session_id: str, limit: int, now: datetime
) -> db.Statement[bool]:
    """One more round of the session if it has had fewer than ``limit``: whether it counted.

    One upsert: a new session's row is inserted with its first round; an existing one is
    counted by ``ON CONFLICT DO UPDATE ... WHERE rounds < limit``, which takes the row's
    lock and checks the row's latest version, so concurrent calls of one session are
    counted one at a time and the limit is exact (two first calls at once insert the row
    once: the second one counts on it).
    """
    params = [agent_id, session_id, db.db_time(now), db.db_time(now), limit, limit]
    return db.Statement(_count_round_sql(), params, _inserted)


@cache
def _count_round_sql() -> str:
    def col(name: str) -> str:
        return db.column(AgentSession, name)

    names = ("agent", "session_id", "rounds", "started_at", "last_call_at")
    return (
        f"INSERT INTO {db.table(AgentSession)} AS s "
        f"({', '.join(col(n) for n in names)}) SELECT %s, %s, 1, %s, %s WHERE %s >= 1 "
        f"ON CONFLICT ({col('agent')}, {col('session_id')}) DO UPDATE "
        f"SET {col('rounds')} = s.{col('rounds')} + 1, "
        f"{col('last_call_at')} = EXCLUDED.{col('last_call_at')} "
        f"WHERE s.{col('rounds')} < %s RETURNING {col('id')}"
    )


def open_mcp_session(*, agent_id: int, session_id: UUID) -> McpSession | None:
    """The agent's MCP session with this id if it was not closed (every MCP request after
    ``initialize`` reads it)."""
    params = db.lookup_values(McpSession, {"id": session_id})
    with db.statement(_mcp_session_sql(), params) as cursor:
        row = cursor.fetchone()
    if row is None:
        return None
    session = db.from_row(McpSession, row)
    # The agent and the closing are checked here, not in the statement: with only the
    # primary key in it, no plan can take the agent's index for it.
    if session.agent_id != agent_id or session.closed_at is not None:
        return None
    return session


@cache
def _mcp_session_sql() -> str:
    return (
        f"SELECT {db.columns(McpSession, 's')} FROM {db.table(McpSession)} s "  # noqa: S608
        f"WHERE s.{db.column(McpSession, 'id')} = %s"
    )
