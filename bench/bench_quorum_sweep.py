"""The quorum sweep's pass with 1,000 and with 200,000 pending calls, same approvals, same run.

    flock /tmp/countersign-bench.lock .venv/bin/python bench/bench_quorum_sweep.py

Needs DATABASE_URL (PostgreSQL). Two dedicated databases, ``<name>_bench_quorum_small`` and
``_large``, are created beside it and dropped at the end; the calls are bulk-loaded with
COPY (the reviewer queue benchmark's calls, ``bench_queue.load``). Both sizes hold the same
approvals: 20,000 settled calls approved twice each, a day and more ago; 200 waiting calls
approved once by their reviewer and once by a deactivated account (no candidates); 5
waiting calls approved by two people without the right to (candidates the sweep checks
under their locks and cannot approve). Each pass is ``sweeps.complete_restored_quorums``,
as beat runs it every few seconds, the two sizes' passes alternating. The figure that
matters is the ratio of the two sizes: a pass must cost what the approvals given cost, not
what the queue's depth does (it took 1.5 s at 200,000 waiting calls when it counted the
approvals of every one).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SMALL = 1_000
LARGE = int(os.environ.get("BENCH_QUORUM_LARGE", 200_000))  # smaller for a dry run
PASSES, WARMUP = int(os.environ.get("BENCH_QUORUM_PASSES", 60)), 5
SETTLED = 20_000
APPROVED_ONCE = 200
STUCK = 5


def main() -> None:
    import bench_queue

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("bench_quorum_sweep: set DATABASE_URL to a PostgreSQL server.")
    parsed = urlparse(url)
    base = parsed.path.lstrip("/") or "countersign"
    admin = urlunparse(parsed._replace(path="/postgres"))
    names = {size: f"{base}_bench_quorum_{size}" for size in ("small", "large")}
    for name in names.values():
        bench_queue.recreate(admin, name)
    os.environ.update(
        DATABASE_URL=urlunparse(parsed._replace(path=f"/{names['small']}")),
        DB_POOL="0",
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only"),
    )
    os.environ.setdefault("SANDBOX_ENABLED", "1")  # the simulated tools live there
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        run(names)
    finally:
        from django.db import connections

        connections.close_all()
        for name in names.values():
            bench_queue.recreate(admin, name, drop_only=True)
        print(f"dropped databases {', '.join(names.values())}")


def run(names: dict[str, str]) -> None:
    import django

    django.setup()
    import bench_queue
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection

    from approvals import sweeps

    for size, count in (("small", SMALL), ("large", LARGE)):
        bench_queue.use(names[size])
        call_command("migrate", verbosity=0)
        world = bench_queue.seed()
        bench_queue.load(world, count)
        approve(world)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE approvals_toolcall")
            cursor.execute("VACUUM ANALYZE approvals_decision")

    timings: dict[str, list[float]] = {"small": [], "large": []}
    for round_ in range(WARMUP + PASSES):
        # Alternate which size goes first, so neither always follows the other.
        for size in ("small", "large") if round_ % 2 else ("large", "small"):
            bench_queue.use(names[size])
            cache.delete(sweeps.QUORUM_CURSOR)  # the same work each pass, at both sizes
            started = time.perf_counter()
            completed = sweeps.complete_restored_quorums()
            elapsed = (time.perf_counter() - started) * 1000
            assert completed == 0
            if round_ >= WARMUP:
                timings[size].append(elapsed)
    figures = {}
    for size in ("small", "large"):
        cuts = statistics.quantiles(timings[size], n=20)
        figures[size] = (statistics.median(timings[size]), cuts[18])
    (s50, s95), (l50, l95) = figures["small"], figures["large"]
    print(f"quorum sweep pass, {PASSES} passes per size, interleaved, after {WARMUP} warm-up ones")
    print(f"  {SMALL:>9,} pending calls: p50 {s50:6.1f} ms  p95 {s95:6.1f} ms")
    print(f"  {LARGE:>9,} pending calls: p50 {l50:6.1f} ms  p95 {l95:6.1f} ms")
    print(
        f"ratio ({LARGE:,} / {SMALL:,}): p50 {l50 / s50:.2f}, p95 {l95 / s95:.2f} (aim: under 1.5)"
    )
    for size, count in (("small", SMALL), ("large", LARGE)):
        bench_queue.use(names[size])
        print(f"  reads of a pass at {count:,} pending calls: {explain():.2f} ms SQL")


def explain() -> float:
    """EXPLAIN ANALYZE's execution time of a pass's reads up to its candidates (the checks
    of each candidate under its lock, the rest of the pass, follow)."""
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from approvals import sweeps

    cache.delete(sweeps.QUORUM_CURSOR)
    with CaptureQueriesContext(connection) as ran:
        sweeps.complete_restored_quorums()
    statements = [query["sql"] for query in ran.captured_queries]
    reads = statements[: next(n for n, sql in enumerate(statements) if "GROUP BY" in sql) + 1]
    total = 0.0
    with connection.cursor() as cursor:
        for sql in reads:
            cursor.execute("EXPLAIN ANALYZE " + sql)
            total += float(cursor.fetchall()[-1][0].split()[2])
    return total


def approve(world: dict[str, object]) -> None:
    """The approvals both sizes hold (the module's docstring), written with COPY."""
    from _copy_rows import copy_columns, copy_row
    from django.contrib.auth.models import User
    from django.db import connection

    from approvals.models import Decision, Status, ToolCall

    reviewer = world["reviewer"]
    gone = User.objects.create_user("gone", "gone@example.com", "pw", is_active=False)
    strangers = [User.objects.create_user(f"stranger-{n}", f"s{n}@example.com") for n in (1, 2)]
    # Calls of the tools that ask two approvals: one that stands makes no quorum.
    waiting = list(
        ToolCall.objects.filter(status=Status.PENDING, approvals_required=2)
        .order_by("created_at")
        .values_list("pk", "created_at")
    )
    step = max(len(waiting) // (APPROVED_ONCE + STUCK), 1)
    picked = waiting[::step][: APPROVED_ONCE + STUCK]
    settled = settle(world)
    columns = [c for c in copy_columns(Decision) if c != "id"]

    def decision(call_id: uuid.UUID, who: User, at: datetime) -> list[object]:
        row = copy_row(
            Decision,
            {
                "call_id": call_id,
                "reviewer_id": who.pk,
                "verdict": "approve",
                "arguments_hash": "0" * 64,  # bench_queue.load's calls
                "policy_version": 1,
                "created_at": at,
            },
        )
        return [v for c, v in zip(copy_columns(Decision), row, strict=True) if c != "id"]

    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY approvals_decision ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for call_id, at in settled:
            for who in (reviewer, strangers[0]):
                copy.write_row(decision(call_id, who, at + timedelta(minutes=1)))
        for n, (call_id, at) in enumerate(picked):
            for who in strangers if n < STUCK else (reviewer, gone):
                copy.write_row(decision(call_id, who, at + timedelta(seconds=30)))


def settle(world: dict[str, object]) -> list[tuple[uuid.UUID, datetime]]:
    """``SETTLED`` succeeded calls over the 30 days before a day ago: their approvals are
    history, which the sweep need not read."""
    from _copy_rows import copy_columns, copy_row
    from django.db import connection

    from approvals.models import ToolCall

    tool = world["tools"]["delete_customer"]  # type: ignore[index]
    agent = world["agents"][0]  # type: ignore[index]
    start = datetime.now(UTC) - timedelta(days=31)
    calls = [(uuid.uuid4(), start + timedelta(minutes=2 * n)) for n in range(SETTLED)]
    columns = copy_columns(ToolCall)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY approvals_toolcall ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for n, (call_id, at) in enumerate(calls):
            given = {
                "id": call_id,
                "agent_id": agent.pk,
                "tool_id": tool.pk,
                "tool_version": tool.version,
                "risk": tool.risk,
                "arguments": "{}",
                "arguments_hash": "0" * 64,
                "session_id": "settled",
                "request_key": f"settled-{n}",
                "status": "succeeded",
                "approvals_required": 2,
                "created_at": at,
                "updated_at": at,
                "decided_at": at,
            }
            copy.write_row(copy_row(ToolCall, given))
    return calls


if __name__ == "__main__":
    main()
