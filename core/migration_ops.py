"""Schema operations that Django's migrations do not offer in the form Countersign needs."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def drop_indexes(*indexes: tuple[str, str, str]) -> migrations.RunPython:
    """Drop these indexes, each ``(name, table, column)``, without holding back writes.

    Django's own way for a foreign key's index, ``AlterField(db_index=False)``, drops the
    foreign key's constraint and adds it again: that locks both tables and checks every row.
    On PostgreSQL ``DROP INDEX CONCURRENTLY`` takes no lock that stops reads or writes and
    checks nothing; it cannot run in a transaction, so the migration is ``atomic = False``
    and changes the field's state alone (``SeparateDatabaseAndState``). Reversed, each index
    is built again, concurrently too.
    """

    def drop(apps: Any, schema_editor: Any) -> None:
        concurrently = _concurrently(schema_editor)
        for name, _table, _column in indexes:
            schema_editor.execute(
                f"DROP INDEX {concurrently}IF EXISTS {schema_editor.quote_name(name)}"
            )

    def build(apps: Any, schema_editor: Any) -> None:
        concurrently = _concurrently(schema_editor)
        quote = schema_editor.quote_name
        for name, table, column in indexes:
            schema_editor.execute(
                f"CREATE INDEX {concurrently}IF NOT EXISTS {quote(name)} "
                f"ON {quote(table)} ({quote(column)})"
            )

    return migrations.RunPython(drop, build, elidable=False)


def _concurrently(schema_editor: Any) -> str:
    return "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
