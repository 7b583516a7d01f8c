"""core.db.later and Countersign's PostgreSQL backend: a statement whose answer nobody waits
for goes to the database with the transaction's next statement or its COMMIT, with the
same effect, in the same order, as if it had run at once; what a rollback undoes, it never
runs."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from core import db
from tests.gateway.conftest import in_threads

pytestmark = pytest.mark.django_db(transaction=True)


def _names() -> list[str]:
    return sorted(Group.objects.values_list("name", flat=True))


def _names_seen_by_another_connection() -> list[str]:
    return in_threads(1, lambda _: _names())[0]


def test_the_backend_is_countersign_s() -> None:
    assert connection.vendor == "postgresql", "these tests need PostgreSQL (DATABASE_URL)"
    assert hasattr(connection, "later")


def test_held_back_until_the_next_statement_which_sees_it() -> None:
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        group = Group(name="night shift")
        db.later(db.insert_statement(group))
        assert captured.captured_queries == [], "nothing sent yet"
        assert group.pk is None
        assert _names() == ["night shift"], "the next statement (the ORM's) sees it"
        assert group.pk is not None and not group._state.adding, "answered when sent"
    assert _names_seen_by_another_connection() == ["night shift"]


def test_sent_with_the_next_hot_path_statement_in_order() -> None:
    with transaction.atomic():
        db.later(db.insert_statement(Group(name="night shift")))
        db.later(db.Statement(f"UPDATE {db.table(Group)} SET name = %s", ["late shift"], db.unread))  # noqa: S608
        with db.statement(f"SELECT name FROM {db.table(Group)}", []) as cursor:  # noqa: S608
            assert cursor.fetchall() == [("late shift",)]


def test_sent_with_the_commit() -> None:
    with CaptureQueriesContext(connection) as captured, transaction.atomic():
        db.later(db.insert_statement(Group(name="night shift")))
    statements = [q["sql"].split(" ")[0] for q in captured.captured_queries]
    assert statements == ["BEGIN", "INSERT", "COMMIT"]
    assert connection.later == []
    assert _names_seen_by_another_connection() == ["night shift"]


def test_its_error_fails_the_commit_and_nothing_of_the_transaction_stays() -> None:
    Group.objects.create(name="night shift")
    with pytest.raises(IntegrityError), transaction.atomic():
        Group.objects.create(name="day shift")
        db.later(db.insert_statement(Group(name="night shift")))  # a duplicate name
    assert connection.later == []
    assert _names() == ["night shift"]
    Group.objects.create(name="late shift")  # the connection is usable again
    assert _names() == ["late shift", "night shift"]


def test_a_rollback_drops_it() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        db.later(db.insert_statement(Group(name="night shift")))
        raise RuntimeError("the request failed")
    assert connection.later == []
    assert _names() == []


def test_a_rollback_to_a_savepoint_drops_only_what_came_after_it() -> None:
    with transaction.atomic():
        db.later(db.insert_statement(Group(name="before")))
        with pytest.raises(RuntimeError), transaction.atomic():
            db.later(db.insert_statement(Group(name="inside")))
            raise RuntimeError("the inner block failed")
        db.later(db.insert_statement(Group(name="after")))
    assert _names() == ["after", "before"]


def test_outside_a_transaction_it_runs_at_once() -> None:
    group = Group(name="night shift")
    db.later(db.insert_statement(group))
    assert group.pk is not None
    assert _names_seen_by_another_connection() == ["night shift"]
