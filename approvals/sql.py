"""The statements every call's life runs, written once (see ``core.db``): its INSERT and the
compare-and-set UPDATE of ``transitions.change``, the one door for ``status``."""

from __future__ import annotations

from functools import cache
from typing import Any
from uuid import UUID

from django.db import connection

from approvals.models import ToolCall
from core import db
from tools_registry import sql as registry_sql


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
