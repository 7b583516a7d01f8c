"""A transaction whose first statement is a hot-path one (``core.db``) sends its BEGIN in
the same round trip, not alone before it as psycopg does; the transaction is the same.

Round trips are counted from libpq's own trace of the protocol (``tests.support.pgtrace``).
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from psycopg import IsolationLevel, pq

from core import db
from tests.gateway.conftest import in_threads
from tests.support.pgtrace import traced

pytestmark = pytest.mark.django_db(transaction=True)

INSERT = f"INSERT INTO {db.table(Group)} (name) VALUES (%s)"  # noqa: S608


def _names() -> list[str]:
    return sorted(Group.objects.values_list("name", flat=True))


def test_begin_goes_with_the_first_hot_path_statement() -> None:
    with traced() as trace, transaction.atomic():
        db.run(INSERT, ["night shift"])
        db.run(INSERT, ["day shift"])
    (found,) = trace
    assert found.sent("BEGIN") == 1
    assert found.round_trips == 3, "BEGIN + INSERT, INSERT, COMMIT"
    assert in_threads(1, lambda _: _names())[0] == ["day shift", "night shift"]


def test_without_it_psycopg_begins_alone() -> None:
    """The baseline the test above improves on: an ORM statement first."""
    with transaction.atomic():
        db.run(INSERT, ["prepared"])  # prepared once per connection: a round trip of its own
    with traced() as trace, transaction.atomic():
        Group.objects.create(name="night shift")
        db.run(INSERT, ["day shift"])
    (found,) = trace
    assert found.sent("BEGIN") == 1
    assert found.round_trips == 4, "BEGIN, INSERT, INSERT, COMMIT"


def test_it_is_a_transaction_a_rollback_undoes() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        db.run(INSERT, ["night shift"])
        assert in_threads(1, lambda _: _names())[0] == [], "not visible before the commit"
        raise RuntimeError("the request failed")
    assert _names() == []


def test_a_failing_first_statement_fails_the_transaction_and_nothing_stays() -> None:
    Group.objects.create(name="night shift")
    with pytest.raises(IntegrityError), transaction.atomic():
        db.run(INSERT, ["night shift"])  # a duplicate name
    assert _names() == ["night shift"]
    with transaction.atomic():  # the connection begins cleanly after it
        db.run(INSERT, ["day shift"])
        assert connection.connection.pgconn.transaction_status == pq.TransactionStatus.INTRANS
    assert _names() == ["day shift", "night shift"]


def test_held_back_statements_and_several_together_begin_the_same_way() -> None:
    with traced() as trace, transaction.atomic():
        db.together(
            db.Statement(INSERT, ["night shift"], db.unread),
            db.Statement(INSERT, ["day shift"], db.unread),
        )
        db.later(db.insert_statement(Group(name="late shift")))
    (found,) = trace
    assert found.sent("BEGIN") == 1
    assert found.round_trips == 2, "BEGIN + both INSERTs, the held-back INSERT + COMMIT"
    assert _names() == ["day shift", "late shift", "night shift"]


def test_a_transaction_of_held_back_statements_only_is_one_exchange() -> None:
    with traced() as trace, transaction.atomic():
        db.later(db.insert_statement(Group(name="night shift")))
    (found,) = trace
    assert found.sent("BEGIN") == 1
    assert found.round_trips == 1, "BEGIN, the held-back INSERT and COMMIT together"
    assert in_threads(1, lambda _: _names())[0] == ["night shift"]


def test_psycopg_is_back_to_transactions_after_a_failure_in_the_first_exchange() -> None:
    Group.objects.create(name="night shift")
    with transaction.atomic():
        with pytest.raises(IntegrityError):
            db.run(INSERT, ["night shift"])  # a duplicate name, in the exchange with BEGIN
        raw = connection.connection
        assert raw.autocommit is False
        assert raw.pgconn.transaction_status == pq.TransactionStatus.INERROR
        transaction.set_rollback(True)
    assert _names() == ["night shift"]


def test_outside_a_transaction_nothing_begins() -> None:
    with traced() as trace:
        db.run(INSERT, ["night shift"])
    (found,) = trace
    assert found.sent("BEGIN") == 0
    assert connection.connection.pgconn.transaction_status == pq.TransactionStatus.IDLE
    assert in_threads(1, lambda _: _names())[0] == ["night shift"]


def test_the_connection_s_isolation_level_is_kept() -> None:
    connection.ensure_connection()
    raw = connection.connection
    held = raw.isolation_level
    raw.isolation_level = IsolationLevel.SERIALIZABLE
    try:
        with transaction.atomic(), db.statement("SHOW transaction_isolation", []) as cursor:
            assert cursor.fetchone() == ("serializable",)
    finally:
        raw.isolation_level = held
