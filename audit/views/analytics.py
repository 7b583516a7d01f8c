"""Charts over a window of days, and the chain-verification status panel."""

from __future__ import annotations

from typing import Any

import redis
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from audit import analytics as stats
from audit import charts, verification_runs
from audit.filters import whole_number
from audit.views.common import auditor_view

WINDOWS = (1, 7, 30, 90)
CHART_CACHE_SECONDS = 60


VOTES = [("approve", "c-went-ahead", "approved"), ("reject", "c-stopped", "rejected")]
RESULTS = [
    ("succeeded", "c-went-ahead", "succeeded"),
    ("failed", "c-stopped", "failed"),
    ("unknown", "c-unknown", "unknown"),
]


def _votes(caption: str, table: dict[str, dict[str, int]]) -> charts.BarChart:
    rows = []
    for label, counts in table.items():
        total = sum(counts.values())
        approved = counts.get("approve", 0) / total if total else 0
        segments = [(counts.get(k, 0), css, f"{counts.get(k, 0)} {name}") for k, css, name in VOTES]
        rows.append((label, segments, f"{total} votes · {approved:.0%} approved"))
    return charts.bars(caption, rows, legend=[(css, name) for _, css, name in VOTES])


@auditor_view
def analytics(request: HttpRequest) -> HttpResponse:
    days = whole_number(request.GET.get("days", "7"), digits=3)
    days = days if days in WINDOWS else 7
    # The charts read the sealer's summary (milliseconds); they are still kept for a minute,
    # as a page that auditors leave open reloads. The chain panel is always live.
    context = {
        "days": days,
        "windows": WINDOWS,
        **_kept_charts(days),
        "status": stats.chain_status(),
        "run": verification_runs.active_run() or verification_runs.latest_run(),
    }
    return render(request, "audit/analytics.html", context)


def _kept_charts(days: int) -> dict[str, Any]:
    try:
        kept: dict[str, Any] | None = cache.get_or_set(
            f"audit:analytics:{days}", lambda: _charts(days), timeout=CHART_CACHE_SECONDS
        )
    except redis.RedisError:
        # The cache's Redis is down: the page was a 500. The charts are made afresh, as
        # they are once a minute anyway.
        kept = None
    return kept or _charts(days)


def _charts(days: int) -> dict[str, object]:
    since, day_list = stats.window(days)
    latency = stats.approval_latency(since)
    cost = stats.token_cost_per_agent(since)
    outcomes = stats.outcomes(since)
    return {
        "since": since,
        "calls_chart": charts.stacked_columns(
            "Calls per tool per day", day_list, stats.calls_per_tool_per_day(since)
        ),
        "latency_chart": charts.bars(
            "Approval latency per tool",
            [
                (
                    item.tool,
                    [
                        (item.median_seconds, "c-median", f"median {item.median_seconds:.0f} s"),
                        (
                            max(item.p90_seconds - item.median_seconds, 0),
                            "c-p90",
                            f"90th percentile {item.p90_seconds:.0f} s",
                        ),
                    ],
                    f"median {_duration(item.median_seconds)} · 90th percentile "
                    f"{_duration(item.p90_seconds)} · {item.decided} decided",
                )
                for item in latency
            ],
            legend=[("c-median", "median"), ("c-p90", "up to the 90th percentile")],
        ),
        "tool_votes": _votes("Votes per tool", stats.verdicts(since, "tool_name")),
        "reviewer_votes": _votes("Votes per reviewer", stats.verdicts(since, "actor_label")),
        "outcomes": charts.bars(
            "Results per tool",
            [
                (
                    tool,
                    [
                        (counts.get(k, 0), css, f"{counts.get(k, 0)} {name}")
                        for k, css, name in RESULTS
                    ],
                    f"{sum(counts.values())} runs · {counts.get('failed', 0)} failed · "
                    f"{counts.get('unknown', 0)} unknown",
                )
                for tool, counts in outcomes.items()
            ],
            legend=[(css, name) for _, css, name in RESULTS],
        ),
        "cost_chart": charts.bars(
            "Token cost per agent",
            [
                (
                    agent,
                    [
                        (t["input_tokens"], "c-input", f"{t['input_tokens']:.0f} input tokens"),
                        (t["output_tokens"], "c-output", f"{t['output_tokens']:.0f} output tokens"),
                    ],
                    f"{t['input_tokens'] + t['output_tokens']:,.0f} tokens · ${t['usd']:,.2f}",
                )
                for agent, t in cost.items()
            ],
            legend=[("c-input", "input tokens"), ("c-output", "output tokens")],
        ),
    }


def _duration(seconds: float) -> str:
    """Seconds as people read a wait: 42 s, 4.5 min, 2.3 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
