"""Schema operations that Django's migrations do not offer in the form Countersign needs."""

from __future__ import annotations

from typing import Any

from django.db.migrations.operations.base import Operation


class DropIndexes(Operation):
    """Drop indexes, each ``(name, table, column)``, without holding back reads or writes.

    Django's own way for a foreign key's index, ``AlterField(db_index=False)``, drops the
    foreign key's constraint and adds it again: that locks both tables and checks every row.
    On PostgreSQL ``DROP INDEX CONCURRENTLY`` takes no lock that stops reads or writes and
    checks nothing (it waits for the transactions already open on the table); it cannot run
    in a transaction, so the migration is ``atomic = False`` and changes the fields' state
    alone (``SeparateDatabaseAndState``). Reversed, each index is built again, concurrently
    too (after dropping what a failed build may have left, an invalid index of that name).
    """

    reversible = True

    def __init__(self, indexes: list[tuple[str, str, str]]) -> None:
        self.indexes = [tuple(index) for index in indexes]

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [], {"indexes": self.indexes})

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # the fields' state changes in the migration's AlterField operations

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        for name, _table, _column in self.indexes:
            self._drop(schema_editor, name)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        quote, concurrently = schema_editor.quote_name, _concurrently(schema_editor)
        for name, table, column in self.indexes:
            self._drop(schema_editor, name)
            schema_editor.execute(
                f"CREATE INDEX {concurrently}{quote(name)} ON {quote(table)} ({quote(column)})"
            )

    def describe(self) -> str:
        return "Drop the indexes " + ", ".join(name for name, _, _ in self.indexes)

    @staticmethod
    def _drop(schema_editor: Any, name: str) -> None:
        schema_editor.execute(
            f"DROP INDEX {_concurrently(schema_editor)}IF EXISTS {schema_editor.quote_name(name)}"
        )


def _concurrently(schema_editor: Any) -> str:
    return "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
