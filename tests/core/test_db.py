"""core.db, the hot path's plain SQL: rows as the ORM writes and reads them, the database's
errors as Django's own, so callers and atomic blocks behave as with the ORM, and every
statement visible to Django's query log like an ORM query."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from core import db as rows

pytestmark = pytest.mark.django_db


def test_an_insert_is_the_orm_s_row() -> None:
    group = rows.insert(Group(name="night shift"))
    assert group.pk is not None and not group._state.adding
    assert Group.objects.get(pk=group.pk).name == "night shift"


def test_a_constraint_violation_is_django_s_integrity_error_and_rolls_back() -> None:
    rows.insert(Group(name="night shift"))
    with pytest.raises(IntegrityError), transaction.atomic():
        rows.insert(Group(name="day shift"))
        rows.insert(Group(name="night shift"))
    assert list(Group.objects.order_by("name").values_list("name", flat=True)) == ["night shift"]


def test_no_statement_runs_in_a_transaction_that_must_roll_back() -> None:
    with transaction.atomic():
        transaction.set_rollback(True)  # what an error caught inside the block leaves
        with pytest.raises(TransactionManagementError):
            rows.insert(Group(name="after the error"))


def test_an_update_changes_only_the_rows_its_conditions_match() -> None:
    night = rows.insert(Group(name="night shift"))
    rows.insert(Group(name="day shift"))
    assert rows.update(Group, {"name": "late shift"}, where={"id": night.pk, "name": "day"}) == 0
    assert rows.update(Group, {"name": "late shift"}, where={"id": night.pk}) == 1
    names = Group.objects.order_by("name").values_list("name", flat=True)
    assert list(names) == ["day shift", "late shift"]


def test_every_statement_shows_in_the_query_log_as_orm_queries_do() -> None:
    with CaptureQueriesContext(connection) as captured:
        night = rows.insert(Group(name="night shift"))
        rows.update(Group, {"name": "late shift"}, where={"id": night.pk})
        with rows.statement(
            f"SELECT {rows.columns(Group, 'g')} FROM {rows.table(Group)} g WHERE g.id = %s",  # noqa: S608
            [night.pk],
        ) as cursor:
            found = rows.from_row(Group, cursor.fetchone())
    assert found.name == "late shift"
    statements = [q["sql"] for q in captured.captured_queries]
    assert len(statements) == 3, statements
    assert statements[0].startswith('INSERT INTO "auth_group"')
    assert statements[1].startswith('UPDATE "auth_group"')


def test_the_hot_path_statements_are_prepared_on_postgresql() -> None:
    """Run more often than psycopg's threshold, a statement is a prepared one (parsed and
    planned once per connection): the server lists it in pg_prepared_statements."""
    night = rows.insert(Group(name="night shift"))
    for _ in range(3):
        rows.update(Group, {"name": "late shift"}, where={"id": night.pk})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ['UPDATE "auth_group"%'],
        )
        assert cursor.fetchone()[0] == 1
