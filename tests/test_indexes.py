"""Lookups by a unique key read that key's rows alone, even with no statistics to plan by.

The hot path's statements are prepared: after a few runs PostgreSQL may keep a generic
plan, made without the parameters' values, and before autovacuum first analyzes a table
(a new database, a table grown fast since) it plans without knowing the table's size.
Django gives every foreign key an index of its own; where a unique key starts with that
column, such a plan took the foreign key's index for ``agent = $1 AND key = $2`` and
filtered every row of the agent by key. It did on the submit benchmark's fresh tables:
storing an Idempotency-Key's response read all of the agent's records
(``docs/benchmarks.md``). Such indexes are gone; these tests keep them gone.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from approvals import sql as approvals_sql
from approvals.models import KnownCounterparty, ToolCall
from core import db
from gateway import sql as gateway_sql
from gateway.models import IdempotencyRecord
from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support import ROOT

INDEXES = """
    SELECT i.relname, array_agg(a.attname ORDER BY k.n), x.indisunique, x.indpred IS NOT NULL,
           bool_and(o.opcdefault)
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    CROSS JOIN unnest(x.indkey::int2[], x.indclass::oid[]) WITH ORDINALITY k(attnum, opclass, n)
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
    JOIN pg_opclass o ON o.oid = k.opclass
    WHERE x.indrelid = to_regclass(%s)
    GROUP BY i.relname, x.indisunique, x.indpred
"""


def _indexes(table: str) -> list[tuple[str, tuple[str, ...], bool, bool, bool]]:
    """(name, columns, unique, partial, default operator classes) of each index on ``table``."""
    with connection.cursor() as cursor:
        cursor.execute(INDEXES, [connection.ops.quote_name(table)])
        return [(name, tuple(cols), *flags) for name, cols, *flags in cursor.fetchall()]


@pytest.mark.django_db
def test_no_index_of_a_product_table_is_the_start_of_its_unique_key() -> None:
    covered = []
    # The apps whose code is this repository's (not Django's or a library's).
    product = [c for c in apps.get_app_configs() if (ROOT / c.name.split(".")[0]).is_dir()]
    assert {c.label for c in product} >= {"audit", "tools_registry", "approvals", "gateway"}
    for config in product:
        for model in config.get_models():
            if model._meta.auto_created or not model._meta.managed:
                continue  # many-to-many tables Django makes, unmanaged views
            indexes = _indexes(model._meta.db_table)
            for name, columns, unique, partial, plain in indexes:
                if unique or partial or not plain:
                    continue  # a LIKE index (varchar_pattern_ops) serves other lookups
                for other, other_columns, other_unique, other_partial, _ in indexes:
                    starts = other_columns[: len(columns)] == columns
                    if other_unique and not other_partial and other != name and starts:
                        covered.append(f"{model._meta.db_table}.{name} (by {other})")
    assert covered == []


@pytest.fixture
def generic_plans() -> None:
    """Plans made as a prepared statement's cached generic plan is, without values, for the
    length of the test's transaction. A table this small could be read whole at about the
    cost of an index lookup; with sequential scans off, the question is which index a
    lookup can use and how much of it, which is what the indexes decide."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("SET LOCAL enable_seqscan = off")


def _run_prepared(sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """Run ``sql`` as a prepared statement; every plan node that read a table."""
    numbered = iter(range(1, len(params) + 1))
    prepared = re.sub(r"%s", lambda _: f"${next(numbered)}", sql)
    name = f"probe_{uuid.uuid4().hex}"
    with connection.cursor() as cursor:
        cursor.execute(f"PREPARE {name} AS {prepared}")
        cursor.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name} ({', '.join(['%s'] * len(params))})",
            params,
        )
        (plan,) = cursor.fetchone()
        cursor.execute(f"DEALLOCATE {name}")
    if isinstance(plan, str):
        plan = json.loads(plan)
    return list(_scans(plan[0]["Plan"]))


def _scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "Relation Name" in node and "Scan" in node["Node Type"]:
        yield node
    for child in node.get("Plans", []):
        yield from _scans(child)


@pytest.mark.django_db
@pytest.mark.usefixtures("generic_plans")
@pytest.mark.parametrize("returning", [False, True], ids=["plain", "returning"])
def test_storing_a_keys_response_reads_that_keys_record_alone(
    world: World, returning: bool
) -> None:
    now = timezone.now()
    IdempotencyRecord.objects.bulk_create(
        IdempotencyRecord(
            agent=world.agent,
            key=f"earlier-{n}",
            request_hash="0" * 64,
            created_at=now,
            locked_until=now + timedelta(seconds=30),
        )
        for n in range(300)
    )
    params = [
        IdempotencyRecord.State.COMPLETE,
        202,
        json.dumps({"body": {}, "headers": {}}),
        None,
        now,
        world.agent.pk,
        "earlier-7",
    ]

    scans = _run_prepared(gateway_sql._complete_key_sql("postgresql", returning=returning), params)

    assert [s["Relation Name"] for s in scans] == [IdempotencyRecord._meta.db_table]
    assert scans[0]["Actual Rows"] == 1
    assert scans[0].get("Rows Removed by Filter", 0) == 0, json.dumps(scans)
    assert IdempotencyRecord.objects.get(key="earlier-7").state == "complete"


@pytest.mark.django_db
@pytest.mark.usefixtures("generic_plans")
def test_looking_up_known_counterparties_reads_those_alone(world: World) -> None:
    KnownCounterparty.objects.bulk_create(
        KnownCounterparty(agent=world.agent, fingerprint=f"{n:032x}") for n in range(300)
    )
    wanted = [f"{7:032x}", f"{9999:032x}"]

    scans = _run_prepared(
        approvals_sql._known_counterparties_sql(len(wanted)),
        [world.agent.pk, wanted[0], world.agent.pk, wanted[1]],
    )

    assert {s["Relation Name"] for s in scans} == {KnownCounterparty._meta.db_table}
    assert sum(s["Actual Rows"] for s in scans) == 1
    assert sum(s.get("Rows Removed by Filter", 0) for s in scans) == 0, json.dumps(scans)
    assert approvals_sql.known_counterparties(world.agent.pk, wanted) == {wanted[0]}


@pytest.mark.django_db
def test_known_counterparties_are_found_among_many_and_repeated_fingerprints(
    world: World,
) -> None:
    known = [f"{n:032x}" for n in range(0, 90, 3)]
    KnownCounterparty.objects.bulk_create(
        KnownCounterparty(agent=world.agent, fingerprint=f) for f in known
    )
    asked = [f"{n:032x}" for n in range(60)] * 2  # several statements' worth, each twice

    found = approvals_sql.known_counterparties(world.agent.pk, asked)

    assert found == {f"{n:032x}" for n in range(0, 60, 3)}


@pytest.mark.django_db
@pytest.mark.usefixtures("generic_plans")
def test_looking_up_calls_by_request_key_reads_those_alone(world: World) -> None:
    """MCP's derived keys (gateway.mcp.calls): each key a lookup of the unique key, once the
    statistics know the agent has many calls. (The agent's session index starts with the
    same column: while the statistics say an agent has about one call, before the table's
    first ANALYZE or after fast growth, a plan, generic or not, may take either, until
    autovacuum analyzes the table; docs/benchmarks.md.)"""
    first = make_call(world)
    ToolCall.objects.bulk_create(
        ToolCall(
            **{
                **{f.attname: getattr(first, f.attname) for f in ToolCall._meta.concrete_fields},
                "id": uuid.uuid4(),
                "request_key": f"earlier-{n}",
            }
        )
        for n in range(300)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {ToolCall._meta.db_table}")  # as autovacuum does
    keys = ["earlier-7", "earlier-9999"]
    query = approvals_sql.calls_by_key_statement(
        world.agent.pk, keys, timezone.now() - timedelta(minutes=5)
    )

    scans = _run_prepared(query.sql, list(query.params))

    assert {s["Index Name"] for s in scans} == {"call_unique_request_key"}, json.dumps(scans)
    assert sum(s["Actual Rows"] for s in scans) == 1
    assert sum(s.get("Rows Removed by Filter", 0) for s in scans) == 0, json.dumps(scans)
    assert db.one(query) == {"earlier-7": (first.status, True)}
