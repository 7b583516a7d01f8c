"""The statements every agent submission runs on the edge's own tables, written once (see
``core.db``): composing them with the ORM cost more CPU than running them."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from django.db import connection

from core import db
from gateway.models import AgentSession, IdempotencyRecord


def insert_key(
    *, agent_id: int, key: str, request_hash: str, now: datetime, locked_until: datetime
) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING``: whether this request inserted the key (the ORM
    has no such statement). Waits while another transaction holds an uncommitted insert of
    the same key."""
    with db.statement(
        _insert_key_sql(),
        [
            agent_id,
            key,
            request_hash,
            str(IdempotencyRecord.State.IN_FLIGHT),
            db.db_time(now),
            db.db_time(locked_until),
        ],
    ) as cursor:
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
) -> None:
    """Store the response a key replays."""
    db.run(
        _complete_key_sql(connection.vendor),
        [
            str(IdempotencyRecord.State.COMPLETE),
            status,
            json.dumps({"body": body, "headers": headers}),
            *db.lookup_values(IdempotencyRecord, {"call": call_id}),
            db.db_time(now),
            agent_id,
            key,
        ],
    )


@cache
def _complete_key_sql(vendor: str) -> str:
    def col(name: str) -> str:
        return db.column(IdempotencyRecord, name)

    as_json = "%s::jsonb" if vendor == "postgresql" else "%s"  # SQLite stores JSON as text
    return (
        f"UPDATE {db.table(IdempotencyRecord)} SET {col('state')} = %s, "  # noqa: S608
        f"{col('response_status')} = %s, {col('response_body')} = {as_json}, "
        f"{col('call')} = %s, {col('completed_at')} = %s "
        f"WHERE {col('agent')} = %s AND {col('key')} = %s"
    )


def count_round(*, agent_id: int, session_id: str, limit: int, now: datetime) -> bool:
    """One more round of the session if it has fewer than ``limit``; whether it counted.

    The conditional UPDATE takes the session row's lock, so concurrent calls of one session
    are counted one at a time and the limit is exact.
    """
    return db.run(_count_round_sql(), [db.db_time(now), agent_id, session_id, limit]) == 1


@cache
def _count_round_sql() -> str:
    def col(name: str) -> str:
        return db.column(AgentSession, name)

    return (
        f"UPDATE {db.table(AgentSession)} SET {col('rounds')} = {col('rounds')} + 1, "  # noqa: S608
        f"{col('last_call_at')} = %s "
        f"WHERE {col('agent')} = %s AND {col('session_id')} = %s AND {col('rounds')} < %s"
    )
