"""The auditor's analytics page over 7 days of 600,000 events, from the sealer's summary,
against counting the trail itself at each view (the baseline, bench/_analytics_baseline.py).

    python bench/bench_audit_analytics.py [--events 600000]

Aim: the page answers in under 0.5 s. Also measured: the one-off rebuild of the summary
(the backfill migration), and what folding each batch into the summary costs the sealer.
Runs in its own database, dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from _audit_bench import bench_database, load_events_sql, setup_django

SEAL_EVENTS = 20_000


def timed(fn: Any, runs: int) -> tuple[float, float]:
    """(median, best) seconds of ``runs`` calls."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), min(seconds)


def figures(module: Any, days: int) -> None:
    since, _ = module.window(days)
    module.calls_per_tool_per_day(since)
    module.approval_latency(since)
    module.verdicts(since, "tool_name")
    module.verdicts(since, "actor_label")
    module.outcomes(since)
    module.token_cost_per_agent(since)


def add_unsealed(count: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO audit_auditevent (occurred_at, action, outcome, actor_type, actor_id,
                actor_label, agent_name, tool_name, session_id, call_id, data, prev_hash, hash)
            SELECT now(), (ARRAY['call.submitted','call.decision','call.approved',
                    'call.execution_started','call.execution_finished'])[1 + g %% 5],
                'approve', 'agent', '1', 'reviewer-1', 'agent-1', 'send_email', 'run-1',
                md5((g / 5)::text || 'new')::uuid,
                jsonb_build_object('token_cost', jsonb_build_object('input_tokens', 900,
                    'output_tokens', 100, 'usd', 0.01)), '', ''
            FROM generate_series(1, %s) AS g
            """,
            [count],
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=600_000)
    options = parser.parse_args()
    with bench_database():
        setup_django()
        import _analytics_baseline as baseline
        from django.contrib.auth.models import Permission, User
        from django.core.cache import cache
        from django.test import Client

        from audit import analytics, chain, rollups

        since, _ = analytics.window(7)
        # One event a second from the start of the 7-day window: 600,000 is 6.9 days.
        loaded = load_events_sql(options.events, start=since.isoformat())
        print(f"loaded {options.events:,} events over 7 days in {loaded:.1f} s")

        started = time.perf_counter()
        chain.rebuild_rollups()
        print(
            f"summary rebuilt from the trail (the backfill): {time.perf_counter() - started:.1f} s"
        )

        figures(baseline, 7)  # warm the cache for both
        base_median, base_best = timed(lambda: figures(baseline, 7), 3)
        new_median, new_best = timed(lambda: figures(analytics, 7), 9)
        print(
            f"figures, counted from the trail (baseline): median {base_median * 1000:,.0f} ms, "
            f"best {base_best * 1000:,.0f} ms"
        )
        print(
            f"figures, read from the summary:             median {new_median * 1000:,.1f} ms, "
            f"best {new_best * 1000:,.1f} ms ({base_median / new_median:,.0f}x faster)"
        )

        auditor = User.objects.create_user("auditor-bench")
        auditor.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(auditor)

        def page() -> None:
            cache.clear()  # no minute-long chart cache: every view computes its charts
            response = client.get("/audit/analytics/?days=7")
            assert response.status_code == 200, response.status_code

        page()
        page_median, page_best = timed(page, 9)
        print(
            f"whole page, no chart cache (test client):    median {page_median * 1000:,.0f} ms, "
            f"best {page_best * 1000:,.0f} ms  (aim: under 500 ms)"
        )

        # The sealer's cost of keeping the summary: the same number of new events sealed
        # with the fold switched off (baseline), then on.
        fold = rollups.fold
        results = {}
        for label, folding in (("without the summary", False), ("with the summary", True)):
            add_unsealed(SEAL_EVENTS)
            rollups.fold = fold if folding else (lambda rows: None)  # type: ignore[assignment]
            started = time.perf_counter()
            sealed = chain.seal_pending()
            results[label] = time.perf_counter() - started
            assert sealed >= SEAL_EVENTS, sealed  # and what the setup above recorded
        rollups.fold = fold  # type: ignore[assignment]
        for label, seconds in results.items():
            print(
                f"sealing {SEAL_EVENTS:,} new events {label}: {seconds:.2f} s "
                f"({SEAL_EVENTS / seconds:,.0f} events/s)"
            )
        print(
            f"the summary costs the sealer "
            f"{results['with the summary'] / results['without the summary']:.2f}x"
        )


if __name__ == "__main__":
    main()
