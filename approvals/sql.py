"""The statements every call's life runs, written once (see ``core.db``): its INSERT and the
compare-and-set UPDATE of ``transitions.change``, the one door for ``status``."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from django.db import connection

from approvals.models import KnownCounterparty, StandingApproval, ToolCall
from core import db
from tools_registry import sql as registry_sql
from tools_registry.models import Tool


def insert_call(call: ToolCall) -> None:
    """``ToolCall.objects.create()`` without composing the INSERT each time."""
    db.insert(call)


def move_call(
    call_id: UUID,
    values: dict[str, Any],
    *,
    sources: tuple[str, ...],
    fence: int | None,
    bump_fence: bool,
) -> bool:
    """``UPDATE ... SET values WHERE id = call_id AND status IN sources [AND fence = fence]``,
    moving the fence on when ``bump_fence``; whether a row matched."""
    params = [
        *db.save_values(ToolCall, values),
        *db.lookup_values(ToolCall, {"id": call_id}),
        *sources,
    ]
    if fence is not None:
        params.append(fence)
    statement = _move_sql(tuple(values), len(sources), fence is not None, bump_fence)
    return db.run(statement, params) == 1


@cache
def _move_sql(names: tuple[str, ...], sources: int, fenced: bool, bump_fence: bool) -> str:
    def col(name: str) -> str:
        return db.column(ToolCall, name)

    assignments = [f"{col(n)} = %s" for n in names]
    if bump_fence:
        assignments.append(f"{col('fence')} = {col('fence')} + 1")
    where = [f"{col('id')} = %s", f"{col('status')} IN ({', '.join(['%s'] * sources)})"]
    if fenced:
        where.append(f"{col('fence')} = %s")
    # Names from the model's own metadata; every value is a parameter.
    return (
        f"UPDATE {db.table(ToolCall)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {' AND '.join(where)}"
    )


def hold_agent_running_for(call_id: UUID) -> None:
    """Hold the run lock of the call's agent (shared) until the transaction ends, as every
    claim does before it locks the call: a stop of the agent then waits for the claim, or
    the claim for the stop (``tools_registry.sql``). Taken before the call's row lock, in
    the order a stop takes them, so the two never wait on each other in a circle."""
    if connection.vendor == "postgresql":
        db.run(_hold_for_call_sql(), [registry_sql.RUN_LOCK_CLASS, call_id])


@cache
def _hold_for_call_sql() -> str:
    agent = db.column(ToolCall, "agent")
    # The call's agent never changes, so reading it without a lock is safe.
    return (
        "SELECT pg_advisory_xact_lock_shared(%s, "  # noqa: S608 - the model's own names
        f"(SELECT ({agent} %% 2147483648)::int4 FROM {db.table(ToolCall)} "
        f"WHERE {db.column(ToolCall, 'id')} = %s))"
    )


def live_standing_statement(
    *, agent_id: int, tool_name: str, now: datetime
) -> db.Statement[list[StandingApproval]]:
    """The agent's live standing approvals of the tool named ``tool_name``, oldest first:
    the ones that may cover a new call (``services.standing.use`` takes the first that
    does). By the tool's name, so that intake can ask before it has read the tool."""
    params = [agent_id, tool_name, db.db_time(now)]
    return db.Statement(_live_standing_sql(), params, _read_standing)


def _read_standing(cursor: Any) -> list[StandingApproval]:
    return [db.from_row(StandingApproval, row) for row in cursor.fetchall()]


@cache
def _live_standing_sql() -> str:
    def col(name: str) -> str:
        return db.column(StandingApproval, name)

    return (
        f"SELECT {db.columns(StandingApproval, 's')} "  # noqa: S608 - the model's own names
        f"FROM {db.table(StandingApproval)} s JOIN {db.table(Tool)} t "
        f"ON t.{db.column(Tool, 'id')} = s.{col('tool')} "
        f"WHERE s.{col('agent')} = %s AND t.{db.column(Tool, 'name')} = %s "
        f"AND s.{col('revoked_at')} IS NULL AND s.{col('expires_at')} > %s "
        f"ORDER BY s.{col('created_at')}, s.{col('id')}"
    )


def known_counterparties(agent_id: int, fingerprints: list[str]) -> set[str]:
    """Which of ``fingerprints`` the agent has already acted on with effect."""
    if not fingerprints:
        return set()
    sql = _known_counterparties_sql(len(fingerprints))
    with db.statement(sql, [agent_id, *fingerprints]) as cursor:
        return {row[0] for row in cursor.fetchall()}


@cache
def _known_counterparties_sql(count: int) -> str:
    def col(name: str) -> str:
        return db.column(KnownCounterparty, name)

    return (
        f"SELECT {col('fingerprint')} FROM {db.table(KnownCounterparty)} "  # noqa: S608
        f"WHERE {col('agent')} = %s AND {col('fingerprint')} IN ({', '.join(['%s'] * count)})"
    )
