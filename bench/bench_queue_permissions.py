"""The reviewer queue under load: what the permission filtering costs per page.

50 tools, 20 reviewers (direct and team grants on a few tools each), 100,000 pending
calls. The queue page (GET /approvals/, same page size for everyone) is rendered through
Django's test client for a reviewer with grants on a few tools and for a superuser, who
sees everything with no permission filtering: the baseline. Prints the number of SQL
queries per page (it must not grow with the grants or the calls) and the time per page.

Runs in its own database (``<name>_bench`` style, e.g. countersign_bench_i3), created and
dropped here:

    python bench/bench_queue_permissions.py            # DATABASE_URL names the server
    python bench/bench_queue_permissions.py --keep     # leave the database for EXPLAIN
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOOLS = 50
REVIEWERS = 20
TEAMS = 5
CALLS = 100_000
RUNS = 21
CALL_LINK = re.compile(r"/approvals/([0-9a-f-]{36})/")


def bench_database_url() -> tuple[str, str, str]:
    """(server URL for maintenance, bench database URL, bench database name)."""
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/countersign"
    parsed = urlparse(base)
    base_name = parsed.path.lstrip("/") or "countersign"
    name = os.environ.get("BENCH_DATABASE_NAME") or (
        "countersign_bench" + base_name.removeprefix("countersign")
    )
    if not re.fullmatch(r"[a-z0-9_]+", name) or "bench" not in name:
        raise SystemExit(f"refusing to use {name!r} as a throwaway benchmark database")
    server = urlunparse(parsed._replace(path="/postgres"))
    return server, urlunparse(parsed._replace(path=f"/{name}")), name


def recreate(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(calls: int) -> dict[str, object]:
    """Tools, people, grants and 100,000 pending calls, inserted in bulk."""
    from django.contrib.auth.models import Group, Permission, User
    from django.db import connection
    from psycopg.types.json import Jsonb

    from approvals.models import ToolCall
    from tools_registry.models import (
        Agent,
        Tool,
        ToolGroupObjectPermission,
        ToolUserObjectPermission,
    )
    from tools_registry.policy import Risk, defaults_for

    rng = random.Random(7)
    tools = Tool.objects.bulk_create(
        Tool(
            name=f"tool_{i:02d}",
            description=f"Benchmark tool {i}.",
            input_schema={"type": "object"},
            risk=Risk.WRITE,
            version="bench",
            **defaults_for(Risk.WRITE).as_fields(),
        )
        for i in range(TOOLS)
    )
    owner = User.objects.create_user("owner")
    agent = Agent.objects.create(name="bench-agent", owner=owner)
    superuser = User.objects.create_superuser("root", "root@example.com", None)
    reviewers = User.objects.bulk_create(
        User(username=f"reviewer_{i:02d}") for i in range(REVIEWERS)
    )
    teams = Group.objects.bulk_create(Group(name=f"team_{i}") for i in range(TEAMS))
    review = Permission.objects.get(codename="review_tool")

    # Each reviewer: 3 direct grants, and the 2 tools of their team: 5 of the 50 tools.
    ToolUserObjectPermission.objects.bulk_create(
        ToolUserObjectPermission(
            user=r, permission=review, content_object=tools[(i * 3 + k) % TOOLS]
        )
        for i, r in enumerate(reviewers)
        for k in range(3)
    )
    ToolGroupObjectPermission.objects.bulk_create(
        ToolGroupObjectPermission(
            group=team, permission=review, content_object=tools[40 + i * 2 + k]
        )
        for i, team in enumerate(teams)
        for k in range(2)
    )
    for i, r in enumerate(reviewers):
        r.groups.add(teams[i % TEAMS])
    # One team holds half of the tools: a reviewer with wide grants, for comparison.
    wide = User.objects.create_user("wide_reviewer")
    wide_team = Group.objects.create(name="wide_team")
    wide.groups.add(wide_team)
    ToolGroupObjectPermission.objects.bulk_create(
        ToolGroupObjectPermission(group=wide_team, permission=review, content_object=t)
        for t in tools[:25]
    )

    rare = User.objects.create_user("rare_reviewer")
    ToolUserObjectPermission.objects.create(user=rare, permission=review, content_object=tools[-1])

    from _copy_rows import copy_columns, copy_row

    columns = ", ".join(f'"{column}"' for column in copy_columns(ToolCall))
    now = datetime.now(UTC)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        with raw.copy(f'COPY "{ToolCall._meta.db_table}" ({columns}) FROM STDIN') as copy:
            for n in range(calls):
                # The last tool is rare (one call in 5,000): its reviewer's page is the
                # planner's hard case, a few matching rows among many pending ones.
                tool = tools[-1] if n % 5000 == 4999 else tools[rng.randrange(TOOLS - 1)]
                created = now - timedelta(seconds=calls - n)
                values = {
                    "id": uuid.uuid4(),
                    "agent_id": agent.pk,
                    "tool_id": tool.pk,
                    "tool_version": "bench",
                    "risk": Risk.WRITE,
                    "arguments": Jsonb({"n": n}),
                    "arguments_hash": f"{n:064x}",
                    "session_id": f"session-{n // 10}",
                    "on_behalf_of": "",
                    "reasoning": "",
                    "token_cost": None,
                    "callback_url": "",
                    "request_key": f"key-{n}",
                    "status": "pending",
                    "approvals_required": 1,
                    "expires_at": now + timedelta(hours=1),
                    "fence": 0,
                    "attempts": 0,
                    "needs_attention": False,
                    "attention_reason": "",
                    "created_at": created,
                    "updated_at": created,
                }
                copy.write_row(copy_row(ToolCall, values))
        cursor.execute(f'ANALYZE "{ToolCall._meta.db_table}"')
    seconds = time.perf_counter() - started
    print(f"seeded {calls:,} pending calls with COPY in {seconds:.1f} s")
    return {"reviewers": reviewers, "superuser": superuser, "wide": wide, "rare": rare}


@dataclass
class Page:
    label: str
    client: object
    tools: int
    rows: int
    queries: list[str]
    sql_ms: float
    times: list[float] = field(default_factory=list)


def prepare(user: object, label: str) -> Page:
    """Sign in, warm up, count the page's queries, check it, and time its SQL in PostgreSQL."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from approvals.models import ToolCall
    from tools_registry.permissions import reviewable_tools

    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    for _ in range(3):  # warm caches and the connection
        assert client.get("/approvals/").status_code == 200
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/approvals/")
    # Read now: the next request empties the connection's query log.
    queries = [q["sql"] for q in captured.captured_queries]
    ids = set(CALL_LINK.findall(response.content.decode()))
    # Correctness on the way: every call shown belongs to a tool the user may review.
    allowed = set(reviewable_tools(user).values_list("pk", flat=True))
    shown_tools = set(ToolCall.objects.filter(pk__in=ids).values_list("tool_id", flat=True))
    assert shown_tools <= allowed, f"{label} sees calls of tools outside their grants"
    # The page's own query, timed by PostgreSQL: what the permission filter costs in SQL.
    # The one that reads the calls' rows; the others count them by risk and ask whether any
    # needs attention (the page's header).
    rows = 'SELECT "approvals_toolcall"."id", "approvals_toolcall"."agent_id"'
    [page_sql] = [sql for sql in queries if sql.startswith(rows)]
    sql_times = []
    with connection.cursor() as cursor:
        for _ in range(5):
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + page_sql)
            sql_times.append(cursor.fetchone()[0][0]["Execution Time"])
    return Page(label, client, len(allowed), len(ids), queries, statistics.median(sql_times))


def explain_ms(queryset: object, runs: int = 5) -> float:
    """PostgreSQL's own execution time of a queryset's SQL (median of ``runs``)."""
    from django.db import connection

    sql, params = queryset.query.sql_with_params()  # type: ignore[attr-defined]
    times = []
    with connection.cursor() as cursor:
        for _ in range(runs):
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
            times.append(cursor.fetchone()[0][0]["Execution Time"])
    return statistics.median(times)


def grants_as_subquery_vs_ids(user: object) -> tuple[float, float]:
    """The queue's query with the grants as a subquery (the planner cannot see which tools)
    against the same query with the granted ids read first, as reviewable_tools does."""
    from guardian.shortcuts import get_objects_for_user

    from approvals.models import Status, ToolCall
    from tools_registry.models import Tool
    from tools_registry.permissions import REVIEW_PERMISSION, reviewable_tool_ids

    def page(tools: object) -> object:
        return ToolCall.objects.filter(
            status=Status.PENDING, tool__in=tools
        ).order_by(  # type: ignore[misc]
            "created_at", "id"
        )[:100]

    subquery = get_objects_for_user(user, REVIEW_PERMISSION, klass=Tool, accept_global_perms=False)
    return explain_ms(page(subquery)), explain_ms(page(reviewable_tool_ids(user)))


def time_pages(pages: list[Page], runs: int) -> None:
    """Interleaved, so a load spike on the shared machine hits every page alike."""
    for _ in range(runs):
        for page in pages:
            started = time.perf_counter()
            page.client.get("/approvals/")  # type: ignore[attr-defined]
            page.times.append((time.perf_counter() - started) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--calls", type=int, default=CALLS, help="pending calls to seed")
    parser.add_argument("--runs", type=int, default=RUNS, help="timed requests per page")
    parser.add_argument("--show-sql", action="store_true", help="print each page's queries")
    options = parser.parse_args()

    server, url, name = bench_database_url()
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "benchmark-only-" + uuid.uuid4().hex)
    os.environ.setdefault("SANDBOX_ENABLED", "1")  # the simulated tools live there
    # The page is measured, not the sign-in: no second factor for the benchmark's reviewers.
    os.environ.setdefault("REQUIRE_2FA", "0")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    recreate(server, name)
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.test.utils import setup_test_environment

        setup_test_environment()  # lets the test client use the "testserver" host
        started = time.perf_counter()
        call_command("migrate", verbosity=0)
        print(f"database {name}: migrated in {time.perf_counter() - started:.1f} s")
        cast = seed(options.calls)

        superuser = prepare(cast["superuser"], "superuser (baseline: no filter)")
        reviewers = [prepare(r, f"reviewer {r.username}") for r in cast["reviewers"]]  # type: ignore[attr-defined]
        wide = prepare(cast["wide"], "reviewer with 25 tools (team)")
        rare = prepare(cast["rare"], "reviewer of 1 rare tool")
        timed = [superuser, reviewers[0], wide, rare]
        time_pages(timed, options.runs)
        time_pages(reviewers[1:], 3)

        print(
            f"\nqueue page: {TOOLS} tools, {REVIEWERS} reviewers, {options.calls:,} pending calls"
        )
        print(
            f"{'who':34} {'tools':>5} {'rows':>4} {'queries':>7} {'page SQL ms':>11} "
            f"{'page ms (median)':>16} {'p90':>6}"
        )
        for page in timed:
            times = sorted(page.times)
            print(
                f"{page.label:34} {page.tools:>5} {page.rows:>4} {len(page.queries):>7} "
                f"{page.sql_ms:>11.2f} {statistics.median(times):>16.1f} "
                f"{times[max(0, int(len(times) * 0.9) - 1)]:>6.1f}"
            )
        counts = sorted({len(p.queries) for p in [*reviewers, wide, rare]})
        sql = [p.sql_ms for p in reviewers]
        page_ms = [statistics.median(p.times) for p in reviewers]
        print(
            f"all {REVIEWERS} reviewers: {counts} queries per page; page SQL "
            f"{min(sql):.2f}-{max(sql):.2f} ms; page {min(page_ms):.0f}-{max(page_ms):.0f} ms"
        )
        ratio = statistics.median(reviewers[0].times) / statistics.median(superuser.times)
        print(
            f"reviewer / superuser: page time {ratio:.2f}x, page SQL "
            f"{reviewers[0].sql_ms / superuser.sql_ms:.2f}x, queries "
            f"{len(reviewers[0].queries)} vs {len(superuser.queries)}"
        )
        print("\nthe queue's query, grants as a subquery vs. ids read first (page SQL ms):")
        for label, user in (("reviewer_00", cast["reviewers"][0]), ("rare tool", cast["rare"])):  # type: ignore[index]
            as_subquery, as_ids = grants_as_subquery_vs_ids(user)
            print(
                f"  {label:12} subquery {as_subquery:8.2f}   ids first {as_ids:6.2f}   "
                f"({as_subquery / as_ids:.0f}x)"
            )
        if options.show_sql:
            for page in (superuser, reviewers[0]):
                print(f"\n-- {page.label}")
                for query in page.queries:
                    print("  ", query[:240])
        if len(counts) != 1:
            raise SystemExit("the number of queries per page depends on the reviewer's grants")
    finally:
        from django.db import connections

        connections.close_all()
        if options.keep:
            print(f"kept database {name}")
        else:
            drop(server, name)


if __name__ == "__main__":
    main()
