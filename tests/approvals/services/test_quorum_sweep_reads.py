"""The quorum sweep reads the approved calls, not the whole queue. Committed (kept apart from
test_decisions.py, whose tests share one world and roll back)."""

from __future__ import annotations

import json
import uuid

from approvals.models import ToolCall
from tests.approvals.conftest import make_call
from tests.approvals.services.test_decisions import _scans, approve, fresh, stuck_quorums
from tests.conftest import World


def test_a_quorum_sweep_reads_the_approved_calls_not_the_whole_queue(live_world: World) -> None:
    """Almost every waiting call has no approval: counting the approvals of each made a
    pass cost in step with the queue (1.5 s at 200,000 waiting calls, every few seconds).
    A pass reads the calls approvals were given to, and still finds every candidate.
    (Committed: the table is emptied after the test, not left with dead rows and their
    statistics, on which other tests' plans would be made.)"""
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from approvals import sweeps

    world = live_world
    template = make_call(world, "delete_customer")
    approve(template, world.bob, confirmation="cus_0003", **fresh())  # 1 of 2: no candidate
    stuck_quorums(world, 3, before=template)  # candidates charlie's approval keeps stuck
    newest_stuck = ToolCall.objects.filter(decisions__reviewer=world.charlie).latest("created_at")
    fields = {f.attname: getattr(template, f.attname) for f in ToolCall._meta.concrete_fields}
    ToolCall.objects.bulk_create(
        ToolCall(**{**fields, "id": uuid.uuid4(), "request_key": uuid.uuid4().hex})
        for _ in range(3000)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {ToolCall._meta.db_table}")  # as autovacuum does

    with CaptureQueriesContext(connection) as ran:
        assert sweeps.complete_restored_quorums() == 0

    assert cache.get(sweeps.QUORUM_CURSOR) == [
        newest_stuck.created_at.isoformat(),
        str(newest_stuck.pk),
    ], "the pass looked at the three candidates"
    # The pass's reads up to its candidates' (the checks of each under its lock follow).
    statements = [query["sql"] for query in ran.captured_queries]
    reads = statements[: next(n for n, sql in enumerate(statements) if "GROUP BY" in sql) + 1]
    read = 0
    with connection.cursor() as cursor:
        for sql in reads:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
            (plan,) = cursor.fetchone()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            read += sum(
                (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
                for node in _scans(plan[0]["Plan"])
                if node["Relation Name"] == ToolCall._meta.db_table
            )
    assert read < 100, f"{read} calls read by {reads}"
