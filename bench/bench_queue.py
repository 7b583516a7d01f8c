"""Queue page time with 1,000 and with 1,000,000 pending calls, same filters, same run.

    flock /tmp/countersign-bench.lock .venv/bin/python bench/bench_queue.py

Needs DATABASE_URL (PostgreSQL). Two dedicated databases, ``<name>_bench_queue_small`` and
``_large``, are created beside it and dropped at the end; the calls are bulk-loaded with
COPY. Each scenario is a reviewer's GET of /approvals/ with the same filters at both sizes,
timed in-process through the whole Django stack (middleware, session, guardian, view,
template), the two sizes' requests alternating so that the machine's other load weighs on
both alike. The figure that matters is the ratio of the two sizes: the page's work must
not grow with the queue.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMALL = 1_000
LARGE = int(os.environ.get("BENCH_QUEUE_LARGE", 1_000_000))  # smaller for a dry run
REQUESTS, WARMUP = int(os.environ.get("BENCH_QUEUE_REQUESTS", 150)), 20
SCENARIOS = {
    "oldest first, no filter": "",
    "newest first, risk=destructive": "order=newest&risk=destructive",
    "tool=send_email, newest first": "tool=send_email&order=newest",
    "agent filter": "agent=agent-07",
    "one session": "session=session-000007",
    "expiring soon, oldest first": "expiring=on",
}
TOOLS = ["send_email", "update_customer", "issue_refund", "delete_customer"]
AGENTS = 20
STEP_US = 50 * 60 * 1_000_000 // 1_000_000  # a million calls over 50 minutes
SESSIONS = 20  # long agent runs: a session's filter still fills a page at 1k


def bench_database_urls() -> tuple[str, dict[str, str]]:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("bench_queue: set DATABASE_URL to a PostgreSQL server (for example make bench).")
    parsed = urlparse(url)
    base = parsed.path.lstrip("/") or "countersign"
    admin = urlunparse(parsed._replace(path="/postgres"))
    return admin, {size: f"{base}_bench_queue_{size}" for size in ("small", "large")}


def recreate(admin_url: str, name: str, *, drop_only: bool = False) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    admin_url, names = bench_database_urls()
    for name in names.values():
        recreate(admin_url, name)
    parsed = urlparse(os.environ["DATABASE_URL"])
    os.environ.update(
        DATABASE_URL=urlunparse(parsed._replace(path=f"/{names['small']}")),
        DB_POOL="0",
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only"),
    )
    os.environ.setdefault("SANDBOX_ENABLED", "1")  # the simulated tools live there
    # The page is measured, not the sign-in: no second factor for the benchmark's reviewers.
    os.environ.setdefault("REQUIRE_2FA", "0")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        run(names)
    finally:
        from django.db import connections

        connections.close_all()
        for name in names.values():
            recreate(admin_url, name, drop_only=True)
        print(f"dropped databases {', '.join(names.values())}")


def use(name: str) -> None:
    """Point Django's connection at one of the two bench databases, connected and ready,
    so that a timed request never pays for the connection."""
    from django.db import connection

    if connection.settings_dict["NAME"] != name:
        connection.close()
        connection.settings_dict["NAME"] = name
    connection.ensure_connection()


def run(names: dict[str, str]) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Two databases, the same people and tools, 1k and 1M pending calls: the requests of the
    # two sizes alternate, so that whatever else the machine does weighs on both alike.
    worlds = {}
    for size, count in (("small", SMALL), ("large", LARGE)):
        use(names[size])
        call_command("migrate", verbosity=0)
        worlds[size] = seed()
        load(worlds[size], count)
        analyze(connection)
    print(
        f"queue page time, {REQUESTS} requests per scenario and size, interleaved, after {WARMUP} warm-up ones"
    )
    figures = measure(worlds, names)

    print()
    print(
        f"{'scenario':34} {'p50 1k':>8} {'p95 1k':>8} {'p50 1M':>8} {'p95 1M':>8} {'ratio p50':>9} {'ratio p95':>9}"
    )
    worst = 0.0
    for label in SCENARIOS:
        (s50, s95), (l50, l95) = figures["small"][label], figures["large"][label]
        worst = max(worst, l50 / s50)
        print(
            f"{label:34} {s50:7.1f}ms {s95:7.1f}ms {l50:7.1f}ms {l95:7.1f}ms "
            f"{l50 / s50:9.2f} {l95 / s95:9.2f}"
        )
    print(f"worst p50 ratio (1M / 1k): {worst:.2f} (aim: under 1.5)")
    use(names["large"])
    explain(worlds["large"])


def seed() -> dict[str, object]:
    from django.contrib.auth.models import User

    from tools_registry import services
    from tools_registry.models import Agent, Tool

    services.sync_tools()
    owner = User.objects.create_user("owner", "owner@example.com", "pw")
    reviewer = User.objects.create_user("reviewer", "reviewer@example.com", "pw")
    tools = {t.name: t for t in Tool.objects.filter(name__in=TOOLS)}
    for tool in tools.values():
        services.grant_review(tool=tool, user=reviewer)
    agents = []
    for index in range(AGENTS):
        agent = Agent.objects.create(name=f"agent-{index:02d}", owner=owner)
        agent.allowed_tools.add(*tools.values())
        agents.append(agent)
    # The calls arrive over the 50 minutes before the run (one hour to live each).
    start = datetime.now(UTC) - timedelta(minutes=50)
    return {"reviewer": reviewer, "tools": tools, "agents": agents, "loaded": 0, "start": start}


def load(world: dict[str, object], count: int) -> None:
    """COPY ``count`` pending calls, spread over the last 50 minutes (TTL one hour)."""
    from django.db import connection

    from approvals.models import ToolCall

    started = time.perf_counter()
    tools = list(world["tools"].values())  # type: ignore[attr-defined]
    agents = world["agents"]  # type: ignore[assignment]
    offset = int(world["loaded"])  # type: ignore[arg-type]
    start = world["start"]
    from _copy_rows import copy_columns, copy_row

    columns = copy_columns(ToolCall)
    arguments = json.dumps({"to": "someone@example.com", "subject": "Hello", "body": "Text"})
    fixed = {
        "tool_version": "",
        "arguments": arguments,
        "arguments_hash": "0" * 64,
        "on_behalf_of": "",
        "reasoning": "Benchmark call.",
        "token_cost": None,
        "callback_url": "",
        "status": "pending",
        "fence": 0,
        "lease_until": None,
        "attempts": 0,
        "enqueued_at": None,
        "result": None,
        "error": None,
        "latency_ms": None,
        "needs_attention": False,
        "attention_reason": "",
        "decided_at": None,
        "started_at": None,
        "finished_at": None,
        "reminded_at": None,
        "escalated_at": None,
    }
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: COPY
        with raw.copy(f"COPY approvals_toolcall ({', '.join(columns)}) FROM STDIN") as copy:
            for index in range(offset, offset + count):
                tool = tools[index % len(tools)]
                # Arrival order, as in life: the table's physical order follows created_at.
                created = start + timedelta(microseconds=STEP_US * index)
                row = {
                    **fixed,
                    "id": uuid.uuid4(),
                    "agent_id": agents[
                        (index // len(tools)) % len(agents)
                    ].pk,  # every agent calls every tool
                    "tool_id": tool.pk,
                    "tool_version": tool.version,
                    "risk": tool.risk,
                    "session_id": f"session-{index % SESSIONS:06d}",
                    "request_key": f"bench-{index}",
                    "approvals_required": tool.approvals_required,
                    "expires_at": created + timedelta(hours=1),
                    "created_at": created,
                    "updated_at": created,
                    "reviewers_notified_at": created,
                }
                copy.write_row(copy_row(ToolCall, row))
    world["loaded"] = offset + count
    print(f"loaded {count:,} pending calls with COPY in {time.perf_counter() - started:.1f}s")


def analyze(connection) -> None:  # type: ignore[no-untyped-def]
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE approvals_toolcall")


def measure(
    worlds: dict[str, dict[str, object]], names: dict[str, str]
) -> dict[str, dict[str, tuple[float, float]]]:
    from django.test import Client

    clients = {}
    for size, world in worlds.items():
        use(names[size])
        clients[size] = Client()
        clients[size].force_login(world["reviewer"])
    figures: dict[str, dict[str, tuple[float, float]]] = {"small": {}, "large": {}}
    for label, query in SCENARIOS.items():
        url = f"/approvals/?{query}"
        timings: dict[str, list[float]] = {"small": [], "large": []}
        for round_ in range(WARMUP + REQUESTS):
            # Alternate which size goes first, so neither always follows the other.
            for size in ("small", "large") if round_ % 2 else ("large", "small"):
                use(names[size])
                started = time.perf_counter()
                response = clients[size].get(url)
                elapsed = (time.perf_counter() - started) * 1000
                assert response.status_code == 200
                if round_ >= WARMUP:
                    timings[size].append(elapsed)
        for size in ("small", "large"):
            cuts = statistics.quantiles(timings[size], n=20)
            figures[size][label] = (statistics.median(timings[size]), cuts[18])
        print(
            f"  {label:34} 1k p50 {figures['small'][label][0]:6.1f} ms  "
            f"1M p50 {figures['large'][label][0]:6.1f} ms"
        )
    return figures


def explain(world: dict[str, object]) -> None:
    """The plans of the page's queries on the calls table at the large size: which index
    serves each scenario (page and counts), and their summed execution time."""
    from django.db import connection
    from django.http import QueryDict
    from django.test.utils import CaptureQueriesContext

    from approvals import selectors
    from approvals.forms import QueueFilterForm

    print()
    print(f"plans at {world['loaded']:,} pending calls (page query and capped counts):")
    for label, query in SCENARIOS.items():
        form = QueueFilterForm(QueryDict(query))
        form.is_valid()
        with CaptureQueriesContext(connection) as queries:
            selectors.queue_page(user=world["reviewer"], filters=form.filters())
        indexes: set[str] = set()
        seq_scans = 0
        total = 0.0
        for captured in queries.captured_queries:
            if "approvals_toolcall" not in captured["sql"]:
                continue
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + captured["sql"])
                plan = [row[0] for row in cursor.fetchall()]
            for line in plan:
                found = re.search(
                    r"Index (?:Only )?Scan(?: Backward)? (?:using|on) (call_\w+)", line
                )
                if found:
                    indexes.add(found.group(1))
                seq_scans += "Seq Scan on approvals_toolcall" in line
                if line.startswith("Execution Time"):
                    total += float(line.split()[2])
        uses = ", ".join(sorted(indexes)) or "no index!"
        print(f"  {label:34} {total:6.2f} ms SQL; {uses}{'; SEQ SCAN' if seq_scans else ''}")


if __name__ == "__main__":
    main()
