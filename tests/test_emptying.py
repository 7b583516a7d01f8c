"""The test database emptied after a test whose rows were committed (``tests.support.emptying``)
is empty for the next test, as Django's flush left it.

The flush's TRUNCATE waits for every transaction still writing a table (a worker process or
web process of a module's fixtures, a thread the test started) and empties the table after
it. These tests run in this order, in one process.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.utils import timezone

from approvals.models import ToolCall
from tests.approvals.conftest import make_call
from tests.conftest import World

LEFT = "written by a transaction still open when its test ended"
_writer: list[threading.Thread] = []


@pytest.mark.django_db(transaction=True)
def test_a_test_before_them() -> None:
    """(The first such test of a process is followed by the flush in any case.)"""
    Group.objects.create(name="before")


@pytest.mark.django_db(transaction=True)
def test_a_writer_still_in_its_transaction_when_the_test_ends() -> None:
    inserted, go = threading.Event(), threading.Event()

    def write() -> None:
        try:
            with transaction.atomic():
                Group.objects.create(name=LEFT)
                inserted.set()
                # Commits once the test's teardown has begun emptying (or after 2 s).
                go.wait(2)
        finally:
            connection.close()

    writer = threading.Thread(target=write)
    writer.start()
    _writer.append(writer)
    assert inserted.wait(10)
    threading.Timer(0.5, go.set).start()


@pytest.mark.django_db(transaction=True)
def test_the_next_test_finds_none_of_its_rows() -> None:
    for writer in _writer:
        writer.join(10)
    assert not Group.objects.filter(name=LEFT).exists()


@pytest.mark.django_db(transaction=True)
def test_a_test_that_commits_many_calls_and_changes_them(live_world: World) -> None:
    """As the sweeps' tests of their plans do (``tests/approvals/test_sweeps.py``)."""
    first = make_call(live_world)
    fields = {f.attname: getattr(first, f.attname) for f in ToolCall._meta.concrete_fields}
    ToolCall.objects.bulk_create(
        ToolCall(**{**fields, "id": uuid.uuid4(), "request_key": uuid.uuid4().hex})
        for _ in range(1000)
    )
    ToolCall.objects.update(expires_at=timezone.now() + timedelta(hours=1))


@pytest.mark.django_db(transaction=True)
def test_the_next_test_finds_its_table_as_the_flush_leaves_it() -> None:
    """Not the pages of the rows deleted, on which the next tests' plans were made (a bitmap
    scan where ``tests/test_indexes.py`` asks for the unique key's index)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s)", [ToolCall._meta.db_table])
        assert cursor.fetchone() == (0,)
