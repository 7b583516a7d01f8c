"""Emptying the test database after a test whose rows were committed (``transactional_db``).

Django's way is its ``flush``: TRUNCATE of every table, then the content types and
permissions made again by ``post_migrate``. Here that takes about 0.3 s after every such
test however few rows it wrote (TRUNCATE makes new files for every table and index), and
the suite has about a thousand of them. A test writes to a few tables: deleting their rows
takes a few milliseconds. So, in one transaction:

* every table is locked, as the flush's TRUNCATE locks it: a transaction still writing
  one (a worker's, a thread's) ends first, and its rows are deleted too;
* the tables that hold rows are found in one statement;
* their rows are deleted with triggers off for that transaction
  (``session_replication_role = replica``): the foreign keys' checks, which the order of
  the deletes would otherwise have to satisfy, and the audit trail's append-only triggers,
  which the flush's TRUNCATE is let past the same way (``tests/conftest.py``).

The tables the flush would fill again (content types, permissions) and the migrations'
record are left as they are. Django's own flush is used instead whenever this one could
differ from it: when a test changed those tables, when a table holds many rows (a TRUNCATE
is the faster there) or takes many pages (deleted, its rows would stay in them, and the
next tests' plans be made on them), or when the database role may not turn triggers off
(only a superuser may; ``make test`` connects as ``postgres``).
"""

from __future__ import annotations

from django.db import DatabaseError, connections, transaction

# What the flush refills (post_migrate) or never touches: kept, and checked unchanged.
KEPT = ("django_migrations", "django_content_type", "auth_permission")
MANY_ROWS = 5_000
# Or a table this big: its DELETEd rows stay in its pages until autovacuum, and the
# statistics of a test that committed many rows with them; the plans of the tests after it
# were made on those (tests/test_indexes.py took a bitmap scan for an index scan).
MANY_PAGES = 32

_kept_as_migrated: dict[str, tuple[int, ...]] = {}


def empty(alias: str) -> bool:
    """Delete every row a test left, but the kept tables'; False (nothing changed) where
    Django's flush must do it instead."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    tables = [
        name
        for name in connection.introspection.django_table_names(
            only_existing=True, include_views=False
        )
        if name not in KEPT
    ]
    if alias not in _kept_as_migrated:  # the first time, the flush: it tells what they hold
        return False
    if _kept_state(connection) != _kept_as_migrated[alias]:
        return False
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            # Every table first, as the flush's TRUNCATE takes each: a transaction still
            # writing one (a fixture's worker or web process, a test's thread) ends before
            # the tables are read, and its rows are deleted with the others'. Unlocked, the
            # DELETE missed the rows it had not committed yet, and the next test found them.
            cursor.execute(
                f"LOCK TABLE {', '.join(quote(t) for t in tables)} IN ACCESS EXCLUSIVE MODE"
            )
            cursor.execute(
                " UNION ALL ".join(
                    f"SELECT %s, EXISTS (SELECT 1 FROM {quote(t)} OFFSET {MANY_ROWS})"  # noqa: S608
                    f" OR pg_relation_size('{quote(t)}') > {MANY_PAGES} * current_setting("
                    "'block_size')::int"
                    f" WHERE EXISTS (SELECT 1 FROM {quote(t)})"
                    for t in tables
                ),
                tables,
            )
            filled = cursor.fetchall()
            if any(many for _, many in filled):
                return False  # nothing deleted: the flush it is
            for table, _ in filled:
                cursor.execute(f"DELETE FROM {quote(table)}")  # noqa: S608 - Django's tables
    except DatabaseError:  # not a superuser: the flush it is
        return False
    return True


def after_flush(alias: str) -> None:
    """The flush made the kept tables again: what they hold now is what the next test must
    find."""
    _kept_as_migrated[alias] = _kept_state(connections[alias])


def _kept_state(connection: object) -> tuple[int, ...]:
    with connection.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(
            "SELECT (SELECT count(*) FROM django_content_type),"
            " (SELECT coalesce(max(id), 0) FROM django_content_type),"
            " (SELECT count(*) FROM auth_permission),"
            " (SELECT coalesce(max(id), 0) FROM auth_permission)"
        )
        return tuple(cursor.fetchone())
