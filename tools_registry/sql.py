"""The statements every agent request runs on the registry's tables, written once (see
``core.db``): composing them with the ORM cost more CPU than running them."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.db import connection

from core import db
from tools_registry.models import Agent, AgentToken, Tool

_ALLOWED = Agent.allowed_tools.through


def active_token(prefix: str) -> AgentToken | None:
    """The unrevoked token with this prefix, with its agent."""
    with db.statement(_active_token_sql(), [prefix]) as cursor:
        row = cursor.fetchone()
    if row is None:
        return None
    token = db.from_row(AgentToken, row)
    token.agent = db.from_row(Agent, row[len(AgentToken._meta.concrete_fields) :])
    return token


@cache
def _active_token_sql() -> str:
    token, agent = db.column(AgentToken, "agent"), db.column(Agent, "id")
    return (
        f"SELECT {db.columns(AgentToken, 't')}, {db.columns(Agent, 'a')} "  # noqa: S608
        f"FROM {db.table(AgentToken)} t JOIN {db.table(Agent)} a ON a.{agent} = t.{token} "
        f"WHERE t.{db.column(AgentToken, 'prefix')} = %s "
        f"AND t.{db.column(AgentToken, 'revoked_at')} IS NULL"
    )


def token_active_statement(token_id: int) -> db.Statement[bool]:
    """Whether the token is still unrevoked, as a statement. Sent by a submission right
    after its run lock (``running_statement``), in the same round trip: under READ
    COMMITTED each statement reads a snapshot of its own, taken once the one before it has
    run, so a revocation (which takes the run lock exclusive, ``services.revoke_token``)
    that committed while the lock was awaited is seen. A token that is no more (its agent
    deleted) reads as revoked."""
    return db.Statement(_token_active_sql(), [token_id], _read_active)


def _read_active(cursor: Any) -> bool:
    return bool(db.first_value(cursor))


@cache
def _token_active_sql() -> str:
    return (
        f"SELECT {db.column(AgentToken, 'revoked_at')} IS NULL "  # noqa: S608
        f"FROM {db.table(AgentToken)} WHERE {db.column(AgentToken, 'id')} = %s"
    )


def tool_with_allowance(agent_id: int, name: str) -> tuple[Tool, bool] | None:
    """The tool named ``name``, and whether the agent may call it; None if there is none."""
    return db.one(tool_with_allowance_statement(agent_id, name))


def tool_with_allowance_statement(
    agent_id: int, name: str, *, hold: bool = False
) -> db.Statement[tuple[Tool, bool] | None]:
    """``tool_with_allowance`` as a statement. With ``hold`` (intake), the tool's row is held
    ``FOR KEY SHARE`` until the transaction ends, as the new call's reference to it holds it
    later: a change of the tool's policy under way (``update_policy`` locks the row ``FOR
    UPDATE``) is waited for here and read as made. Read without it, the call waited for the
    change all the same (at its INSERT), then was stored as the policy read before said: a
    small refund approved by a rule that the change saved meanwhile, refusing every refund,
    had taken out."""
    held = hold and connection.vendor == "postgresql"
    return db.Statement(_tool_with_allowance_sql(held), [agent_id, name], _read_tool_with_allowance)


def _read_tool_with_allowance(cursor: Any) -> tuple[Tool, bool] | None:
    row = cursor.fetchone()
    if row is None:
        return None
    return db.from_row(Tool, row[1:]), bool(row[0])


@cache
def _tool_with_allowance_sql(held: bool = False) -> str:
    allowed = db.quote(_ALLOWED._meta.db_table)
    agent_col = db.quote(_ALLOWED._meta.get_field("agent").column)
    tool_col = db.quote(_ALLOWED._meta.get_field("tool").column)
    return (
        f"SELECT EXISTS (SELECT 1 FROM {allowed} allowed "  # noqa: S608
        f"WHERE allowed.{agent_col} = %s AND allowed.{tool_col} = tool.{db.column(Tool, 'id')}), "
        f"{db.columns(Tool, 'tool')} FROM {db.table(Tool)} tool "
        f"WHERE tool.{db.column(Tool, 'name')} = %s" + (" FOR KEY SHARE OF tool" if held else "")
    )


# An agent's run lock: a PostgreSQL advisory lock (transaction-scoped) in a key space of its
# own, (RUN_LOCK_CLASS, agent id). Every submission and every claim holds it shared; a stop
# takes it exclusive. The lock manager queues requests in order, so a stop waits only for
# the submissions and claims already under way, and those that come after it wait for it and
# then find the agent stopped: nothing slips in between the stop and its cancellations. (A
# row lock on the agent would not do: new shared lockers may overtake a waiting FOR UPDATE,
# and a burst of submissions could hold a stop off for its whole length.)
# A token's revocation takes it exclusive too, and a submission reads its token after the
# lock (``token_active_statement``): none authenticated before a revocation creates a call
# after it.
RUN_LOCK_CLASS = 0x43535450


def run_lock_key(agent_id: int) -> int:
    """The agent's half of its run lock's key (an int4: ids past 2**31 share keys, which
    only makes their stops wait for each other's submissions)."""
    return agent_id % 2**31


def hold_agent_running(agent_id: int) -> str | None:
    """Hold the agent's run lock (shared) until the transaction ends, and read whether it
    was stopped: the reason if it was, None if it runs. Without PostgreSQL (the embedded
    mode, SQLite's single writer) there is no lock to take.

    One statement: the row is read ``FOR KEY SHARE`` (the lock every insert that refers to
    the agent takes anyway), so if a stop committed while the run lock was awaited, the
    agent's latest version is the one read (READ COMMITTED re-reads a row a concurrent
    transaction updated before locking it), not the one the statement's snapshot held.
    """
    return db.one(running_statement(agent_id))


def running_statement(agent_id: int) -> db.Statement[str | None]:
    """``hold_agent_running`` as a statement, to run with others (``db.together``)."""
    postgresql = connection.vendor == "postgresql"
    params = [RUN_LOCK_CLASS, run_lock_key(agent_id), agent_id] if postgresql else [agent_id]
    return db.Statement(_hold_sql(postgresql), params, _read_stop_reason)


def _read_stop_reason(cursor: Any) -> str | None:
    row = cursor.fetchone()
    return None if row is None or not row[0] else str(row[1])


def lock_agent_for_stop(agent_id: int) -> None:
    """Take the agent's run lock exclusive until the transaction ends: wait for the
    submissions and claims under way, hold off the ones to come. Taken by a stop, a resume
    and the revocation of one of the agent's tokens."""
    if connection.vendor == "postgresql":
        db.run("SELECT pg_advisory_xact_lock(%s, %s)", [RUN_LOCK_CLASS, run_lock_key(agent_id)])


@cache
def _hold_sql(postgresql: bool) -> str:
    stopped_at, reason = db.column(Agent, "stopped_at"), db.column(Agent, "stop_reason")
    read = f"SELECT a.{stopped_at} IS NOT NULL, a.{reason} FROM {db.table(Agent)} a "  # noqa: S608
    where = f"WHERE a.{db.column(Agent, 'id')} = %s"
    if not postgresql:
        return read + where
    return (
        f"{read}CROSS JOIN (SELECT pg_advisory_xact_lock_shared(%s, %s)) run_lock "
        f"{where} FOR KEY SHARE OF a"
    )


def tool_risk_statement(name: str) -> db.Statement[str | None]:
    """The risk of the tool named ``name``; None if there is none."""
    return db.Statement(_tool_risk_sql(), [name], db.first_value)


@cache
def _tool_risk_sql() -> str:
    return (
        f"SELECT {db.column(Tool, 'risk')} FROM {db.table(Tool)} "  # noqa: S608
        f"WHERE {db.column(Tool, 'name')} = %s"
    )
