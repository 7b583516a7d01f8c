"""Charts over a window of days, and the chain-verification status panel."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from audit import analytics as stats
from audit import charts
from audit.filters import whole_number
from audit.views.common import auditor_view

WINDOWS = (1, 7, 30, 90)
CHART_CACHE_SECONDS = 60


def _two_part(table: dict[str, dict[str, int]], parts: list[tuple[str, str]]) -> charts.HBarChart:
    rows = []
    for label, counts in table.items():
        total = sum(counts.values()) or 1
        segments = [
            (counts.get(key, 0), f"bar-{key}", f"{key}: {counts.get(key, 0)}") for key, _ in parts
        ]
        first_share = counts.get(parts[0][0], 0) / total
        rows.append((label, segments, f"{sum(counts.values())} · {first_share:.0%} {parts[0][1]}"))
    return charts.hbars(rows, legend=[(f"bar-{key}", name) for key, name in parts])


@auditor_view
def analytics(request: HttpRequest) -> HttpResponse:
    days = whole_number(request.GET.get("days", "7"), digits=3)
    days = days if days in WINDOWS else 7
    # The charts aggregate a window of the trail (seconds on millions of events); they are
    # kept for a minute. The chain panel is always live.
    charts_context: dict[str, Any] = cache.get_or_set(
        f"audit:analytics:{days}", lambda: _charts(days), timeout=CHART_CACHE_SECONDS
    ) or _charts(days)
    context = {
        "days": days,
        "windows": WINDOWS,
        **charts_context,
        "status": stats.chain_status(),
    }
    return render(request, "audit/analytics.html", context)


def _charts(days: int) -> dict[str, object]:
    since, day_list = stats.window(days)
    latency = stats.approval_latency(since)
    cost = stats.token_cost_per_agent(since)
    votes = [("approve", "approved"), ("reject", "rejected")]
    return {
        "since": since,
        "calls_chart": charts.stacked_columns(day_list, stats.calls_per_tool_per_day(since)),
        "latency": latency,
        "latency_chart": charts.hbars(
            [
                (
                    item.tool,
                    [
                        (item.median_seconds, "bar-median", f"median {item.median_seconds:.0f} s"),
                        (
                            max(item.p90_seconds - item.median_seconds, 0),
                            "bar-p90",
                            f"90th percentile {item.p90_seconds:.0f} s",
                        ),
                    ],
                    f"median {item.median_seconds:.0f} s · p90 {item.p90_seconds:.0f} s · {item.decided}",
                )
                for item in latency
            ],
            legend=[("bar-median", "median"), ("bar-p90", "up to the 90th percentile")],
        ),
        "tool_votes": _two_part(stats.verdicts(since, "tool_name"), votes),
        "reviewer_votes": _two_part(stats.verdicts(since, "actor_label"), votes),
        "outcomes": charts.hbars(
            [
                (
                    tool,
                    [
                        (counts.get(k, 0), f"bar-{k}", f"{k}: {counts.get(k, 0)}")
                        for k in ("succeeded", "failed", "unknown")
                    ],
                    f"{counts.get('failed', 0)} failed · {counts.get('unknown', 0)} unknown",
                )
                for tool, counts in stats.outcomes(since).items()
            ],
            legend=[
                ("bar-succeeded", "succeeded"),
                ("bar-failed", "failed"),
                ("bar-unknown", "unknown"),
            ],
        ),
        "cost": cost,
        "cost_chart": charts.hbars(
            [
                (
                    agent,
                    [
                        (
                            totals["input_tokens"],
                            "bar-input",
                            f"input {totals['input_tokens']:.0f} tokens",
                        ),
                        (
                            totals["output_tokens"],
                            "bar-output",
                            f"output {totals['output_tokens']:.0f} tokens",
                        ),
                    ],
                    f"{totals['input_tokens'] + totals['output_tokens']:.0f} tokens · ${totals['usd']:.2f}",
                )
                for agent, totals in cost.items()
            ],
            legend=[("bar-input", "input tokens"), ("bar-output", "output tokens")],
        ),
    }
