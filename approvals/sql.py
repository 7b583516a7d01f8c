"""The statements every call's life runs, written once (see ``core.db``): its INSERT, the
row lock every decision on a call reads it through, and the compare-and-set UPDATE of
``transitions.change``, the one door for ``status``."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from django.db import DatabaseError, connection
from django.db.models import Model

from approvals.models import KnownCounterparty, StandingApproval, ToolCall
from core import db
from tools_registry import sql as registry_sql
from tools_registry.models import Agent, Tool


def insert_call(call: ToolCall) -> None:
    """``ToolCall.objects.create()`` without composing the INSERT each time, sent with the
    transaction's next statement or its COMMIT (``db.insert_later``): a new call's INSERT
    goes with its audit event. A second call with its agent's request key fails there."""
    db.insert_later(call)


def lock_call(call_id: UUID) -> ToolCall | None:
    """The call, its row locked until the transaction ends (``FOR UPDATE OF`` the call
    only), with its tool and the tool's upstream, its agent and the agent's owner, in one
    prepared statement; None if there is no such call.

    ``transitions.lock_call`` without filters, as the ORM's ``select_for_update(of=("self",))
    .select_related(...)`` reads it: composing that query cost the executor's claim more
    CPU than all its other statements together.
    """
    return db.one(lock_call_statement(call_id))


def lock_call_statement(
    call_id: UUID, *, skip_locked: bool = False
) -> db.Statement[ToolCall | None]:
    """``lock_call`` as a statement, to send with others (``db.together``); ``skip_locked``:
    None, not a wait, while another transaction holds the call's row (a sweep's read)."""
    return db.Statement(
        _lock_call_sql(skip_locked=skip_locked),
        db.lookup_values(ToolCall, {"id": call_id}),
        _read_locked_call,
    )


def _read_locked_call(cursor: Any) -> ToolCall | None:
    row = cursor.fetchone()
    if row is None:
        return None
    instances: list[Model | None] = []
    start = 0
    for model in _locked_models():
        width = len(model._meta.concrete_fields)
        values = row[start : start + width]
        # The upstream is the one outer join: a tool declared in code has none.
        instances.append(None if values[0] is None else db.from_row(model, values))
        start += width
    call, tool, upstream, agent, owner = instances
    assert isinstance(call, ToolCall) and isinstance(tool, Tool) and isinstance(agent, Agent)
    tool.upstream = upstream  # type: ignore[assignment]
    agent.owner = owner  # type: ignore[assignment]
    call.tool = tool
    call.agent = agent
    call.tool_allowed = row[start]  # type: ignore[attr-defined]  # guards.tool_still_allowed
    call.database_time = row[start + 1]  # type: ignore[attr-defined]  # claim.lease_until
    return call


@cache
def _locked_models() -> tuple[type[Model], ...]:
    """The models of ``lock_call``'s row, in the order of its columns: the call, its tool,
    the tool's upstream, its agent, the agent's owner."""
    upstream = Tool._meta.get_field("upstream").related_model
    owner = Agent._meta.get_field("owner").related_model
    assert isinstance(upstream, type) and isinstance(owner, type)
    return (ToolCall, Tool, upstream, Agent, owner)


@cache
def _lock_call_sql(*, skip_locked: bool = False) -> str:
    models = _locked_models()
    selected = ", ".join(db.columns(m, alias) for m, alias in zip(models, "ctuao", strict=True))

    def join(kind: str, model: type[Model], alias: str, on: str) -> str:
        return f"{kind} {db.table(model)} {alias} ON {alias}.{db.column(model, 'id')} = {on}"

    # Whether the tool is still on the agent's allowlist (guards.tool_still_allowed).
    allowlist = Agent.allowed_tools.through
    allowed = (
        f"EXISTS (SELECT 1 FROM {db.table(allowlist)} x "  # noqa: S608
        f"WHERE x.{db.column(allowlist, 'agent')} = c.{db.column(ToolCall, 'agent')} "
        f"AND x.{db.column(allowlist, 'tool')} = c.{db.column(ToolCall, 'tool')})"
    )
    # Names from the models' own metadata; the id is a parameter. The clock is read outside
    # the locking query: in its own select list it is read before the wait for a row another
    # transaction holds (and not again unless that one changed the row), so a claim that
    # waited would stamp a lease already shortened by the wait.
    return (
        f"SELECT locked.*, clock_timestamp() FROM (SELECT {selected}, {allowed} "  # noqa: S608
        f"FROM {db.table(ToolCall)} c "
        f"{join('JOIN', Tool, 't', f'c.{db.column(ToolCall, "tool")}')} "
        f"{join('LEFT JOIN', models[2], 'u', f't.{db.column(Tool, "upstream")}')} "
        f"{join('JOIN', Agent, 'a', f'c.{db.column(ToolCall, "agent")}')} "
        f"{join('JOIN', models[4], 'o', f'a.{db.column(Agent, "owner")}')} "
        f"WHERE c.{db.column(ToolCall, 'id')} = %s "
        f"FOR UPDATE OF c{' SKIP LOCKED' if skip_locked else ''}) locked"
    )


def read_call(call_id: UUID) -> ToolCall | None:
    """The call as stored now (no lock, no related rows) in one prepared statement; None if
    there is no such call. ``refresh_from_db()`` composed this query again for every read
    call the gateway answered: a tenth of the read's CPU."""
    statement = db.Statement(
        _read_call_sql(), db.lookup_values(ToolCall, {"id": call_id}), _read_call
    )
    return db.one(statement)


def _read_call(cursor: Any) -> ToolCall | None:
    row = cursor.fetchone()
    return None if row is None else db.from_row(ToolCall, row)


@cache
def _read_call_sql() -> str:
    return (
        f"SELECT {db.columns(ToolCall, 'c')} FROM {db.table(ToolCall)} c "  # noqa: S608
        f"WHERE c.{db.column(ToolCall, 'id')} = %s"
    )


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
    statement = _move_sql(tuple(values), len(sources), fence is not None, bump_fence)
    return db.run(statement, _move_params(call_id, values, sources, fence)) == 1


def _move_params(
    call_id: UUID, values: dict[str, Any], sources: tuple[str, ...], fence: int | None
) -> list[Any]:
    params = [
        *db.save_values(ToolCall, values),
        *db.lookup_values(ToolCall, {"id": call_id}),
        *sources,
    ]
    if fence is not None:
        params.append(fence)
    return params


# The SQLSTATE of ``countersign_call_moved()`` (migration 0011): a held-back move matched no row.
NOT_MOVED = "CS001"


class NotMoved(DatabaseError):
    """A move that had to match matched no row (raised at once where the UPDATE cannot be
    held back; on PostgreSQL the database raises it, as ``NOT_MOVED``)."""

    def __init__(self, call_id: UUID) -> None:
        super().__init__(f"call {call_id} was not moved")
        self.call_id = call_id


def not_moved(exc: BaseException, call_id: UUID) -> bool:
    """Whether ``exc`` is the held-back move of the call ``call_id`` matching no row (and not
    another call's, failing in the same transaction), from either side."""
    if isinstance(exc, NotMoved):
        return exc.call_id == call_id
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) != NOT_MOVED:
        return False
    # countersign_call_moved() names the call first in its message.
    message = getattr(getattr(cause, "diag", None), "message_primary", None) or ""
    return f"call {call_id} " in message


def move_call_later(
    call_id: UUID,
    values: dict[str, Any],
    *,
    sources: tuple[str, ...],
    fence: int | None,
    bump_fence: bool,
) -> None:
    """``move_call``, held back to go to the database with the transaction's next statement
    or its COMMIT (``core.db.later``), for a move that has to match: one round trip fewer.

    The statement fails by itself when it matches no row (``countersign_call_moved``), and
    with it that statement's round trip and the transaction: nothing is half-written, and
    the error is recognised by ``not_moved``. Without PostgreSQL it runs at once, and
    ``NotMoved`` is raised at once.
    """
    if connection.vendor != "postgresql":
        if not move_call(call_id, values, sources=sources, fence=fence, bump_fence=bump_fence):
            raise NotMoved(call_id)
        return
    params = [
        *_move_params(call_id, values, sources, fence),
        *db.lookup_values(ToolCall, {"id": call_id}),  # named in the error
    ]
    statement = _guarded_move_sql(tuple(values), len(sources), fence is not None, bump_fence)
    db.later(db.Statement(statement, params, db.unread))


@cache
def _guarded_move_sql(names: tuple[str, ...], sources: int, fenced: bool, bump_fence: bool) -> str:
    update = _move_sql(names, sources, fenced, bump_fence)
    return (
        f"WITH moved AS ({update} RETURNING 1) "  # noqa: S608 - built from the model's own names
        "SELECT countersign_call_moved(count(*), %s) FROM moved"
    )


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
        db.one(hold_agent_running_statement(call_id))


def hold_agent_running_statement(call_id: UUID) -> db.Statement[None]:
    """``hold_agent_running_for`` as a statement, to send with others (PostgreSQL only)."""
    return db.Statement(_hold_for_call_sql(), [registry_sql.RUN_LOCK_CLASS, call_id], db.unread)


def try_hold_agent_running_for(call_id: UUID) -> bool:
    """``hold_agent_running_for`` without waiting, for a sweep: False (nothing held) while a
    stop or resume of the agent holds its run lock or queues for it. A queued stop waits
    for the claims under way, one of which may be paused for as long as it likes; the sweep
    skips the call, as it skips a row another transaction holds."""
    if connection.vendor != "postgresql":
        return True
    params = [registry_sql.RUN_LOCK_CLASS, call_id]
    # NULL for no such call: nothing to skip (reading the call then finds none).
    return db.one(db.Statement(_hold_for_call_sql(wait=False), params, _not_refused))


def _not_refused(cursor: Any) -> bool:
    return cursor.fetchone()[0] is not False


@cache
def _hold_for_call_sql(*, wait: bool = True) -> str:
    agent = db.column(ToolCall, "agent")
    take = "pg_advisory_xact_lock_shared" if wait else "pg_try_advisory_xact_lock_shared"
    # The call's agent never changes, so reading it without a lock is safe.
    return (
        f"SELECT {take}(%s, "  # noqa: S608 - the model's own names
        f"(SELECT ({agent} %% 2147483648)::int4 FROM {db.table(ToolCall)} "
        f"WHERE {db.column(ToolCall, 'id')} = %s))"
    )


def hold_tool_for(call_id: UUID) -> None:
    """Hold the row of the call's tool ``FOR KEY SHARE`` until the transaction ends, as a
    verdict does before it locks the call: a change of who may review the tool (a grant
    given or taken, ``tools_registry.services.grants``, which locks the row ``FOR UPDATE``)
    or of the tool itself (its policy, a sync) then waits for the verdict under way, or the
    verdict for it, and reads it as changed. Other verdicts, claims and intake (whose
    foreign key takes the same lock) do not wait on it. PostgreSQL only: SQLite lets one
    transaction write at a time."""
    if connection.vendor == "postgresql":
        db.one(db.Statement(_hold_tool_sql(), [call_id], db.unread))


def hold_tool(tool_id: int) -> None:
    """``hold_tool_for`` by the tool's id, for intake, which has no call yet: a standing
    approval is about to stand for its author's vote (``services.standing.use``), and a
    change of who may review the tool under way decides first whether it still may."""
    if connection.vendor == "postgresql":
        db.one(db.Statement(_hold_tool_by_id_sql(), [tool_id], db.unread))


@cache
def _hold_tool_by_id_sql() -> str:
    tool_id = db.column(Tool, "id")
    return f"SELECT 1 FROM {db.table(Tool)} WHERE {tool_id} = %s FOR KEY SHARE"  # noqa: S608


def try_hold_tool_for(call_id: UUID) -> bool:
    """``hold_tool_for`` without waiting, for a sweep that approves (the quorum sweep):
    False (nothing held) while a change of the tool or of its grants holds the row, as a
    sweep skips a call row another transaction holds; the next pass looks again. False too
    for no such call."""
    if connection.vendor != "postgresql":
        return True
    return db.one(try_hold_tool_statement(call_id))


def try_hold_tool_statement(call_id: UUID) -> db.Statement[bool]:
    """``try_hold_tool_for`` as a statement, to send with others (PostgreSQL only)."""
    return db.Statement(_hold_tool_sql(wait=False), [call_id], _found)


def _found(cursor: Any) -> bool:
    return cursor.fetchone() is not None


@cache
def _hold_tool_sql(*, wait: bool = True) -> str:
    tool_id = db.column(Tool, "id")
    # The call's tool never changes, so reading it without a lock is safe.
    return (
        f"SELECT 1 FROM {db.table(Tool)} WHERE {tool_id} = "  # noqa: S608 - the model's names
        f"(SELECT {db.column(ToolCall, 'tool')} FROM {db.table(ToolCall)} "
        f"WHERE {db.column(ToolCall, 'id')} = %s) FOR KEY SHARE{'' if wait else ' SKIP LOCKED'}"
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
        # Given for another version of the tool, it covers nothing (services.standing).
        f"AND s.{col('tool_version')} = t.{db.column(Tool, 'version')} "
        f"ORDER BY s.{col('created_at')}, s.{col('id')}"
    )


def take_standing_use(standing_id: int, now: datetime) -> int | None:
    """Count one use of the standing approval if it is live with a use left: its uses with
    this one, or None. One conditional UPDATE: concurrent calls each take a use or find it
    spent, and each is told its own count, not the one read before another's committed."""
    params = [standing_id, db.db_time(now)]
    return db.one(db.Statement(_take_standing_use_sql(), params, db.first_value))


@cache
def _take_standing_use_sql() -> str:
    def col(name: str) -> str:
        return db.column(StandingApproval, name)

    uses, most = col("uses"), col("max_uses")
    return (
        f"UPDATE {db.table(StandingApproval)} SET {uses} = {uses} + 1 "  # noqa: S608
        f"WHERE {col('id')} = %s AND {col('revoked_at')} IS NULL AND {col('expires_at')} > %s "
        f"AND ({most} IS NULL OR {uses} < {most}) RETURNING {uses}"
    )


# Fingerprints looked up per statement: a call names any number of recipients, and each
# size of the statement is a prepared statement of its own (SQLite takes 500 at most).
COUNTERPARTIES_PER_STATEMENT = 16


def known_counterparties(agent_id: int, fingerprints: list[str]) -> set[str]:
    """Which of ``fingerprints`` the agent has already acted on with effect."""
    wanted = list(dict.fromkeys(fingerprints))
    known: set[str] = set()
    for start in range(0, len(wanted), COUNTERPARTIES_PER_STATEMENT):
        some = wanted[start : start + COUNTERPARTIES_PER_STATEMENT]
        params = [value for fingerprint in some for value in (agent_id, fingerprint)]
        with db.statement(_known_counterparties_sql(len(some)), params) as cursor:
            known.update(row[0] for row in cursor.fetchall())
    return known


@cache
def _known_counterparties_sql(count: int) -> str:
    """One lookup of (agent, fingerprint) per fingerprint. ``fingerprint IN (...)`` let a
    prepared statement's generic plan look up the agent's rows by the unique key's first
    column and filter all of them (tests/test_indexes.py)."""

    def col(name: str) -> str:
        return db.column(KnownCounterparty, name)

    one = (
        f"SELECT {col('fingerprint')} FROM {db.table(KnownCounterparty)} "  # noqa: S608
        f"WHERE {col('agent')} = %s AND {col('fingerprint')} = %s"
    )
    return " UNION ALL ".join([one] * count)


def remember_counterparties(agent_id: int, fingerprints: list[str], now: datetime) -> None:
    """``KnownCounterparty.objects.bulk_create(..., ignore_conflicts=True)`` as one prepared
    statement: it runs in every successful write's finish."""
    if connection.vendor != "postgresql":
        KnownCounterparty.objects.bulk_create(
            [
                KnownCounterparty(agent_id=agent_id, fingerprint=f, first_seen_at=now)
                for f in fingerprints
            ],
            ignore_conflicts=True,
        )
        return
    params = [agent_id, db.db_time(now), fingerprints]
    db.later(db.Statement(_remember_counterparties_sql(), params, db.unread))


@cache
def _remember_counterparties_sql() -> str:
    def col(name: str) -> str:
        return db.column(KnownCounterparty, name)

    # In the fingerprints' order, as bulk_create inserts them.
    return (
        f"INSERT INTO {db.table(KnownCounterparty)} "  # noqa: S608 - the model's own names
        f"({col('agent')}, {col('first_seen_at')}, {col('fingerprint')}) "
        "SELECT %s, %s, f FROM unnest(%s::varchar[]) WITH ORDINALITY AS u (f, n) "
        "ORDER BY n ON CONFLICT DO NOTHING"
    )


def calls_by_key_statement(
    agent_id: int, keys: list[str], since: datetime
) -> db.Statement[dict[str, tuple[str, bool]]]:
    """The agent's calls with these request keys: ``{key: (status, whether it changed after
    since)}``. One ``(agent, request_key)`` lookup per key, as ``known_counterparties``
    does, so that every key is answered by the unique key's index."""
    since_param = db.db_time(since)
    params = [value for key in keys for value in (since_param, agent_id, key)]
    return db.Statement(_calls_by_key_sql(len(keys)), params, _read_calls_by_key)


def _read_calls_by_key(cursor: Any) -> dict[str, tuple[str, bool]]:
    return {key: (status, bool(changed)) for key, status, changed in cursor.fetchall()}


@cache
def _calls_by_key_sql(count: int) -> str:
    def col(name: str) -> str:
        return db.column(ToolCall, name)

    one = (
        f"SELECT {col('request_key')}, {col('status')}, {col('updated_at')} > %s "  # noqa: S608
        f"FROM {db.table(ToolCall)} WHERE {col('agent')} = %s AND {col('request_key')} = %s"
    )
    return " UNION ALL ".join([one] * count)
