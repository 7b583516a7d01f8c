"""Plain SQL for the few rows every agent submission reads and writes.

The ORM spends more CPU composing a statement than PostgreSQL spends running it; on the
submit path (bench/bench_submit.py) that was most of the request. These helpers build
each model's column list, INSERT and UPDATE once per process and then only convert values, the
way ``Model.save()`` and a queryset do (``pre_save`` and ``get_db_prep_save`` on the way in,
the fields' converters on the way out), with no signals: none of the models they are used
for has receivers, and the tests cover their rows like any other.

On PostgreSQL the statements run as prepared statements (parsed and planned once per
connection): Django's own cursors bind parameters client-side and never prepare, so
``statement`` uses a server-binding psycopg cursor on the same connection, inside the same
transaction. ``DB_PREPARED_STATEMENTS=0`` (for a pooler that cannot keep them) turns the
preparing off; the statements then run as plain server-bound queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import AutoField, BigAutoField, Field, Model, SmallAutoField


@cache
def _insertable(model: type[Model]) -> tuple[tuple[Field, ...], Field | None]:
    """The fields an INSERT writes, and the auto-increment primary key it returns, if any."""
    pk = model._meta.pk
    auto = pk if isinstance(pk, AutoField | BigAutoField | SmallAutoField) else None
    return tuple(f for f in model._meta.concrete_fields if f is not auto), auto


@cache
def _insert_sql(model: type[Model], vendor: str) -> str:
    fields, auto = _insertable(model)
    quote = connection.ops.quote_name
    # Names from the model's own metadata, never from a request.
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(str(f.column)) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    return sql + (f" RETURNING {quote(str(auto.column))}" if auto else "")


@contextmanager
def statement(sql: str, params: Sequence[Any]) -> Iterator[Any]:
    """Run one hot-path statement in the current transaction; yields its cursor.

    Bypasses Django's cursor wrapper (no query logging) but keeps its two safeguards: no
    statement inside an atomic block that must roll back, and the driver's errors raised as
    Django's own (``IntegrityError`` ...), marking the connection as it would.
    """
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            yield cursor
        return
    import psycopg

    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    with psycopg.Cursor(connection.connection) as cursor:
        with connection.wrap_database_errors:
            cursor.execute(sql, params, prepare=True)
        yield cursor


def run(sql: str, params: Sequence[Any]) -> int:
    """Run one hot-path statement that returns no rows; the number of rows it changed."""
    with statement(sql, params) as cursor:
        return int(cursor.rowcount)


def insert(obj: Model) -> Model:
    """INSERT one new model instance, as ``obj.save()`` would, and mark it saved."""
    fields, auto = _insertable(type(obj))
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with statement(_insert_sql(type(obj), connection.vendor), values) as cursor:
        if auto is not None:
            setattr(obj, auto.attname, cursor.fetchone()[0])
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


def update(model: type[Model], values: dict[str, Any], *, where: dict[str, Any]) -> int:
    """``UPDATE ... SET values WHERE where`` (field names, equality joined with AND), values
    prepared as ``QuerySet.update()`` prepares them; the number of rows it changed."""
    field = _concrete(model)
    params = [
        *(field[n].get_db_prep_save(v, connection) for n, v in values.items()),
        *(field[n].get_db_prep_value(v, connection) for n, v in where.items()),
    ]
    return run(_update_sql(model, tuple(values), tuple(where)), params)


@cache
def _concrete(model: type[Model]) -> dict[str, Field]:
    return {f.name: f for f in model._meta.concrete_fields}


@cache
def _update_sql(model: type[Model], names: tuple[str, ...], where: tuple[str, ...]) -> str:
    quote, field = connection.ops.quote_name, _concrete(model)

    def column(name: str) -> str:
        return quote(str(field[name].column))

    # Names from the model's own metadata, never from a request.
    return (
        f"UPDATE {quote(model._meta.db_table)} "  # noqa: S608
        f"SET {', '.join(f'{column(n)} = %s' for n in names)} "
        f"WHERE {' AND '.join(f'{column(n)} = %s' for n in where)}"
    )


@cache
def columns(model: type[Model], alias: str) -> str:
    """``alias.col, ...`` for every concrete field, in the order ``from_row`` reads them."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(str(f.column))}" for f in model._meta.concrete_fields)


@cache
def _readers(model: type[Model], vendor: str) -> tuple[list[str], list[tuple[int, Any, list[Any]]]]:
    """Each field's attname, and the converters the ORM applies to the values read (on
    PostgreSQL, JSON arrives as text and is decoded by the field)."""
    fields = model._meta.concrete_fields
    converting = []
    for index, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            converting.append((index, col, found))
    return [f.attname for f in fields], converting


def from_row[M: Model](model: type[M], values: tuple[Any, ...] | list[Any]) -> M:
    """A model instance from the values of ``columns(model, ...)``, converted as the ORM does."""
    names, converting = _readers(model, connection.vendor)
    row = list(values[: len(names)])
    for index, col, converters in converting:
        for converter in converters:
            row[index] = converter(row[index], col, connection)
    return model.from_db(connection.alias, names, row)
