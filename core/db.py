"""Hand-written SQL for the few statements on Countersign's hot paths.

The ORM spends more CPU composing a statement than PostgreSQL spends running it; on the
submit and execute paths (``bench/``) that was most of the work. These helpers build each
model's column list, INSERT and UPDATE once per process and then only convert values, the
way ``Model.save()`` and a queryset do (``pre_save`` and ``get_db_prep_save`` on the way in,
the fields' converters on the way out), with no signals: none of the models they are used
for has receivers.

Statements run through Django's cursor wrapper, so query logging (``DB_LOG_LEVEL=DEBUG``),
``connection.queries``, ``assertNumQueries`` and ``CaptureQueriesContext`` see them like
any ORM query, and the driver's errors arrive as Django's own (``IntegrityError`` ...).
On PostgreSQL the wrapper holds a server-binding psycopg cursor that asks for a prepared
statement (parsed and planned once per connection): Django's own cursors bind parameters
client-side and never prepare. ``DB_PREPARED_STATEMENTS=0`` (for a pooler that cannot keep
them) turns preparing off; the statements then run as plain server-bound queries.

The statements themselves live beside the models they touch (``<app>/sql.py``), with table
and column names taken from the models' ``_meta``, never from a request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import AutoField, BigAutoField, Field, Model, SmallAutoField
from psycopg import pq


class _Preparing:
    """Runs ``execute`` with ``prepare=True``: psycopg prepares it unless the connection's
    ``prepare_threshold`` is None (``DB_PREPARED_STATEMENTS=0``)."""

    cursor: Any
    db: Any

    def _execute(self, sql: str, params: Any, *ignored_wrapper_args: Any) -> Any:
        self.db.validate_no_broken_transaction()
        with self.db.wrap_database_errors:
            return self.cursor.execute(sql, params, prepare=True)


class _PreparingCursor(_Preparing, CursorWrapper):
    pass


class _PreparingDebugCursor(_Preparing, CursorDebugWrapper):
    def execute(self, sql: Any, params: Any = None) -> Any:
        # Logged with its values in place, as Django logs its own client-side cursors'.
        with self.debug_sql(self.db.ops.compose_sql(sql, params), params):
            return CursorWrapper.execute(self, sql, params)


def _connection() -> Any:
    """The thread's database connection itself. ``django.db.connection`` is a proxy that
    looks the connection up again on every attribute: a hundred times per statement once
    each field prepares its value with it."""
    return connections[DEFAULT_DB_ALIAS]


def hand_back_pooled_connection() -> None:
    """Give this thread's connection back to its process's pool while the thread waits on
    something else for as long as that takes (a read's handler on a slow upstream): the
    pool (``DB_POOL_MAX_SIZE``) is shared by every thread of a web process, and a
    connection held through such waits kept every other request of the process from the
    database once a few reads were slow. The next query borrows one again.

    Nothing happens without a pool (closing would cost a new connection for the next
    query) or inside a transaction (a test's, which closing would end)."""
    conn = _connection()
    if getattr(conn, "pool", None) is not None and not conn.in_atomic_block:
        conn.close()


@contextmanager
def statement(sql: str, params: Sequence[Any]) -> Iterator[Any]:
    """Run one hot-path statement in the current transaction; yields its cursor. Statements
    waiting to be sent (``later``) go first, in the same round trip."""
    connection = _connection()
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            yield cursor
        return
    connection.ensure_connection()
    waiting = _take_later(connection)
    if waiting or _begins_transaction(connection.connection):
        with _pipelined(connection, waiting, [Statement(sql, params, unread)]) as (cursor,):
            yield cursor
        return
    connection.validate_thread_sharing()
    wrapper = _PreparingDebugCursor if connection.queries_logged else _PreparingCursor
    with wrapper(psycopg.Cursor(connection.connection), connection) as cursor:
        cursor.execute(sql, params)
        yield cursor


@dataclass(frozen=True)
class Statement[T]:
    """A hot-path statement to run later, alone (``one``) or with others (``together``):
    its SQL, its parameters, and how to read its answer from the cursor that ran it."""

    sql: str
    params: Sequence[Any]
    read: Callable[[Any], T]


def one[T](query: Statement[T]) -> T:
    """Run one statement in the current transaction; its answer."""
    with statement(query.sql, query.params) as cursor:
        return query.read(cursor)


def together(*queries: Statement[Any]) -> list[Any]:
    """Run statements in the current transaction in one round trip; their answers, in order.

    On PostgreSQL they go out in psycopg's pipeline mode: sent one after the other without
    waiting, answered at one sync (with the transaction's BEGIN, if it has not started yet).
    They run in order, each seeing the ones before it, exactly as if run one by one; only
    the waiting between them is gone. A failing statement fails the batch (and the
    transaction), with Django's error, as it would have alone. Elsewhere they run in turn.
    Statements held back by ``later`` go first, in the same round trip.
    """
    connection = _connection()
    if connection.vendor != "postgresql":
        return [one(query) for query in queries]
    with _pipelined(connection, _take_later(connection), queries) as cursors:
        return [query.read(cursor) for query, cursor in zip(queries, cursors, strict=True)]


def later(query: Statement[Any]) -> None:
    """Run a statement whose answer nobody waits for (an audit event, a stored response)
    with the transaction's next statement, or with its COMMIT, instead of alone now: one
    round trip fewer, and the same statements in the same order as if it had run now.

    Its answer is still read (``query.read``), when it arrives. Its error fails the
    statement it went with, or the COMMIT, and so the transaction, as it would have alone;
    a rollback drops it with everything else. Outside a transaction, or without
    Countersign's PostgreSQL backend (``core.postgresql``), it runs now.
    """
    connection = _connection()
    waiting: list[Statement[Any]] | None = getattr(connection, "later", None)
    if waiting is None or not connection.in_atomic_block:
        one(query)
    else:
        waiting.append(query)


def send_later(connection: Any, *, commit: bool = False) -> None:
    """Send the statements ``later`` holds back, and COMMIT with them when ``commit`` (the
    backend calls this before any other statement, and at commit)."""
    waiting = _take_later(connection)
    if waiting or commit:
        with _pipelined(connection, waiting, [], commit=commit):
            pass


def _take_later(connection: Any) -> list[Statement[Any]]:
    waiting: list[Statement[Any]] | None = getattr(connection, "later", None)
    if not waiting:
        return []
    taken = list(waiting)
    waiting.clear()
    return taken


@contextmanager
def _pipelined(
    connection: Any,
    waiting: Sequence[Statement[Any]],
    queries: Sequence[Statement[Any]],
    *,
    commit: bool = False,
) -> Iterator[list[Any]]:
    """Send ``waiting`` (statements ``later`` held back), then ``queries`` (then COMMIT) in
    one round trip, in psycopg's pipeline mode, after the transaction's BEGIN if it has not
    started yet; read the held-back statements' answers and yield the cursors of
    ``queries``, answered. Every cursor is closed after."""
    connection.ensure_connection()
    connection.validate_thread_sharing()
    wrapper = _PreparingDebugCursor if connection.queries_logged else _PreparingCursor
    raw = connection.connection
    begin = _begins_transaction(raw)
    commands: list[Any] = []  # BEGIN and COMMIT: answered, never read
    cursors: list[Any] = []  # one per statement, ``waiting`` then ``queries``
    try:
        with connection.wrap_database_errors, _own_begin(raw, begin), raw.pipeline():
            if begin:
                commands.append(_command(raw, raw._get_tx_start_command()))
            for query in (*waiting, *queries):
                cursor = wrapper(psycopg.Cursor(raw), connection)
                cursors.append(cursor)
                cursor.execute(query.sql, query.params)
            if commit:
                # A statement of the pipeline, answered at its one sync: psycopg's commit()
                # would sync after it, and the pipeline's end then wait for a second answer.
                commands.append(_command(raw, b"COMMIT"))
        for query, cursor in zip(waiting, cursors, strict=False):
            query.read(cursor)
        yield cursors[len(waiting) :]
    finally:
        for cursor in (*commands, *cursors):
            cursor.close()


def _command(raw: Any, command: bytes) -> Any:
    """Send a transaction command (BEGIN, COMMIT) in the pipeline; its cursor."""
    cursor = psycopg.Cursor(raw)
    cursor.execute(command, prepare=False)
    return cursor


def _begins_transaction(raw: Any) -> bool:
    """Whether the next statement starts the transaction: Django has one open (psycopg's
    autocommit is off) and nothing has been sent in it yet."""
    return not raw.autocommit and raw.pgconn.transaction_status == pq.TransactionStatus.IDLE


@contextmanager
def _own_begin(raw: Any, begin: bool) -> Iterator[None]:
    """While a pipeline that starts with our own BEGIN is sent, keep psycopg from sending
    its own.

    psycopg opens a transaction with a BEGIN sent and answered alone, before the first
    statement, in pipeline mode too: a round trip of its own for every transaction. Here
    the BEGIN is the pipeline's first statement instead (the same BEGIN, with the
    connection's isolation level), and psycopg is told the connection is in autocommit
    until the pipeline is answered, so that it adds none. After the answer the connection
    is in the transaction, as if psycopg had begun it; a failure leaves it in a failed
    transaction, which Django's atomic block rolls back as always.
    """
    if not begin:
        yield
        return
    raw._autocommit = True  # psycopg's own flag: the setter would refuse while in a pipeline
    try:
        yield
    finally:
        raw._autocommit = False


def unread(cursor: Any) -> None:
    """The ``read`` of a statement whose answer says nothing (an UPDATE, an INSERT)."""
    return None


def first_value(cursor: Any) -> Any:
    """The ``read`` of a statement that answers one value: its first row's first column,
    or None when it answers no row (an UPDATE ... RETURNING that matched none)."""
    row = cursor.fetchone()
    return None if row is None else row[0]


def run(sql: str, params: Sequence[Any]) -> int:
    """Run one hot-path statement that returns no rows; the number of rows it changed."""
    with statement(sql, params) as cursor:
        return int(cursor.rowcount)


def quote(name: str) -> str:
    return _connection().ops.quote_name(name)


def table(model: type[Model]) -> str:
    """The model's table, quoted."""
    return quote(model._meta.db_table)


def column(model: type[Model], name: str) -> str:
    """The column of the model's field ``name``, quoted."""
    return quote(str(_concrete(model)[name].column))


@cache
def _insertable(model: type[Model]) -> tuple[tuple[Field, ...], Field | None]:
    """The fields an INSERT writes, and the auto-increment primary key it returns, if any."""
    pk = model._meta.pk
    auto = pk if isinstance(pk, AutoField | BigAutoField | SmallAutoField) else None
    return tuple(f for f in model._meta.concrete_fields if f is not auto), auto


@cache
def _insert_sql(model: type[Model], vendor: str) -> str:
    fields, auto = _insertable(model)
    sql = (
        f"INSERT INTO {table(model)} "  # noqa: S608 - names from the model's own metadata
        f"({', '.join(quote(str(f.column)) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    return sql + (f" RETURNING {quote(str(auto.column))}" if auto else "")


def insert(obj: Model) -> Model:
    """INSERT one new model instance, as ``obj.save()`` would, and mark it saved."""
    return one(insert_statement(obj))


def insert_later(obj: Model) -> None:
    """``insert`` sent with the transaction's next statement or its COMMIT (``later``), for
    an instance whose primary key is set before the INSERT, so that nothing waits for its
    answer. The instance counts as saved from now on; an INSERT that fails (a unique key)
    fails the statement it went with, or the COMMIT, and so the transaction."""
    if _insertable(type(obj))[1] is not None:
        raise ValueError(f"{type(obj).__name__}'s primary key comes from the database")
    later(insert_statement(obj))
    obj._state.adding = False
    obj._state.db = _connection().alias


def insert_statement[M: Model](obj: M) -> Statement[M]:
    """``insert`` as a statement (to send ``later``, say): the instance is marked saved, and
    takes its new primary key, when the answer is read."""
    fields, auto = _insertable(type(obj))
    connection = _connection()
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]

    def saved(cursor: Any) -> M:
        if auto is not None:
            setattr(obj, auto.attname, cursor.fetchone()[0])
        obj._state.adding = False
        obj._state.db = connection.alias
        return obj

    return Statement(_insert_sql(type(obj), connection.vendor), values, saved)


def save_values(model: type[Model], values: dict[str, Any]) -> list[Any]:
    """``values`` (by field name) prepared for the database as ``QuerySet.update()`` does."""
    field, connection = _concrete(model), _connection()
    return [field[n].get_db_prep_save(v, connection) for n, v in values.items()]


def lookup_values(model: type[Model], values: dict[str, Any]) -> list[Any]:
    """``values`` (by field name) prepared for the database as a filter's values are."""
    field, connection = _concrete(model), _connection()
    return [field[n].get_db_prep_value(v, connection) for n, v in values.items()]


def update(model: type[Model], values: dict[str, Any], *, where: dict[str, Any]) -> int:
    """``UPDATE ... SET values WHERE where`` (field names, equality joined with AND), values
    prepared as ``QuerySet.update()`` prepares them; the number of rows it changed."""
    params = [*save_values(model, values), *lookup_values(model, where)]
    return run(_update_sql(model, tuple(values), tuple(where)), params)


@cache
def _concrete(model: type[Model]) -> dict[str, Field]:
    return {f.name: f for f in model._meta.concrete_fields}


@cache
def _update_sql(model: type[Model], names: tuple[str, ...], where: tuple[str, ...]) -> str:
    return (
        f"UPDATE {table(model)} "  # noqa: S608 - names from the model's own metadata
        f"SET {', '.join(f'{column(model, n)} = %s' for n in names)} "
        f"WHERE {' AND '.join(f'{column(model, n)} = %s' for n in where)}"
    )


@cache
def columns(model: type[Model], alias: str) -> str:
    """``alias.col, ...`` for every concrete field, in the order ``from_row`` reads them."""
    return ", ".join(f"{alias}.{quote(str(f.column))}" for f in model._meta.concrete_fields)


@cache
def _readers(model: type[Model], vendor: str) -> tuple[list[str], list[tuple[int, Any, list[Any]]]]:
    """Each field's attname, and the converters the ORM applies to the values read (on
    PostgreSQL, JSON arrives as text and is decoded by the field)."""
    fields, connection = model._meta.concrete_fields, _connection()
    converting = []
    for index, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            converting.append((index, col, found))
    return [f.attname for f in fields], converting


def from_row[M: Model](model: type[M], values: tuple[Any, ...] | list[Any]) -> M:
    """A model instance from the values of ``columns(model, ...)``, converted as the ORM does."""
    connection = _connection()
    names, converting = _readers(model, connection.vendor)
    row = list(values[: len(names)])
    for index, col, converters in converting:
        for converter in converters:
            row[index] = converter(row[index], col, connection)
    return model.from_db(connection.alias, names, row)


def db_time(value: Any) -> Any:
    """A datetime as the driver takes it in SQL written by hand (SQLite: text)."""
    return _connection().ops.adapt_datetimefield_value(value)
