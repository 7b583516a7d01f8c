"""The statements every agent request runs on the registry's tables, written once (see
``core.db``): composing them with the ORM cost more CPU than running them."""

from __future__ import annotations

from functools import cache

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


def tool_with_allowance(agent_id: int, name: str) -> tuple[Tool, bool] | None:
    """The tool named ``name``, and whether the agent may call it; None if there is none."""
    with db.statement(_tool_with_allowance_sql(), [agent_id, name]) as cursor:
        row = cursor.fetchone()
    if row is None:
        return None
    return db.from_row(Tool, row[1:]), bool(row[0])


@cache
def _tool_with_allowance_sql() -> str:
    allowed = db.quote(_ALLOWED._meta.db_table)
    agent_col = db.quote(_ALLOWED._meta.get_field("agent").column)
    tool_col = db.quote(_ALLOWED._meta.get_field("tool").column)
    return (
        f"SELECT EXISTS (SELECT 1 FROM {allowed} allowed "  # noqa: S608
        f"WHERE allowed.{agent_col} = %s AND allowed.{tool_col} = tool.{db.column(Tool, 'id')}), "
        f"{db.columns(Tool, 'tool')} FROM {db.table(Tool)} tool "
        f"WHERE tool.{db.column(Tool, 'name')} = %s"
    )
