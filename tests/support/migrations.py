"""Tests of a migration: the test database moved to given migrations, and back."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.state import StateApps


def migrate(targets: list[tuple[str, str]]) -> StateApps:
    """Migrate the test database to ``targets``; the models as they are there."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def at_the_latest() -> Iterator[list[tuple[str, str]]]:
    """Every app's newest migration, where the database is left whatever the test does
    (the body of a ``latest`` fixture)."""
    nodes = MigrationExecutor(connection).loader.graph.leaf_nodes()
    yield nodes
    migrate(nodes)
