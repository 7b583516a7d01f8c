"""The baseline of bench_audit_analytics.py: the analytics page's figures counted from the
trail itself at each view, as Countersign did before the sealer kept a summary
(audit.rollups). Kept here verbatim so the benchmark compares the two in the same run."""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from statistics import median, quantiles
from typing import Any

from django.conf import settings
from django.db.models import Count, FloatField, OuterRef, Subquery, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, TruncDate
from django.utils import timezone


from audit.models import AuditEvent


def window(days: int) -> tuple[datetime, list[date]]:
    today = timezone.now().date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=timezone.get_current_timezone())
    return since, [first + timedelta(days=n) for n in range(days)]


def _in_window(action: str | list[str], since: datetime) -> Any:
    actions = [action] if isinstance(action, str) else action
    return AuditEvent.objects.filter(action__in=actions, occurred_at__gte=since)


def calls_per_tool_per_day(since: datetime) -> dict[str, dict[date, int]]:
    series: dict[str, dict[date, int]] = defaultdict(dict)
    rows = (
        _in_window("call.submitted", since)
        .annotate(day=TruncDate("occurred_at"))
        .values_list("tool_name", "day")
        .annotate(n=Count("id"))
    )
    for tool, day, count in rows:
        series[tool or "(none)"][day] = count
    return dict(series)


@dataclass
class Latency:
    tool: str
    decided: int
    median_seconds: float
    p90_seconds: float


def approval_latency(since: datetime) -> list[Latency]:
    """Submission to final decision (approved or rejected), per tool."""
    submitted = AuditEvent.objects.filter(
        call_id=OuterRef("call_id"), action="call.submitted"
    ).values("occurred_at")[:1]
    rows = (
        _in_window(["call.approved", "call.rejected"], since)
        .exclude(call_id=None)
        .annotate(submitted_at=Subquery(submitted))
        .values_list("tool_name", "occurred_at", "submitted_at")
    )
    per_tool: dict[str, list[float]] = defaultdict(list)
    for tool, decided_at, submitted_at in rows.iterator(chunk_size=5000):
        if submitted_at is not None:
            per_tool[tool].append(max((decided_at - submitted_at).total_seconds(), 0.0))
    result = []
    for tool, seconds in sorted(per_tool.items()):
        p90 = quantiles(seconds, n=10)[-1] if len(seconds) > 1 else seconds[0]
        result.append(Latency(tool, len(seconds), median(seconds), p90))
    return result


def verdicts(since: datetime, by: str) -> dict[str, dict[str, int]]:
    """Approve/reject counts of reviewers' votes, per tool (``by="tool_name"``) or reviewer."""
    table: dict[str, dict[str, int]] = defaultdict(dict)
    rows = _in_window("call.decision", since).values_list(by, "outcome").annotate(n=Count("id"))
    for key, outcome, count in rows:
        table[key][outcome] = count
    return dict(sorted(table.items()))


def outcomes(since: datetime) -> dict[str, dict[str, int]]:
    """Results per tool: succeeded, failed, unknown."""
    table: dict[str, dict[str, int]] = defaultdict(dict)
    rows = (
        _in_window("call.execution_finished", since)
        .values_list("tool_name", "outcome")
        .annotate(n=Count("id"))
    )
    for tool, outcome, count in rows:
        table[tool][outcome] = count
    return dict(sorted(table.items()))


def token_cost_per_agent(since: datetime) -> dict[str, dict[str, float]]:
    def total(key: str) -> Sum:
        return Sum(Cast(KT(f"data__token_cost__{key}"), FloatField()))

    rows = (
        _in_window("call.submitted", since)
        .values("agent_name")
        .annotate(
            input_tokens=total("input_tokens"),
            output_tokens=total("output_tokens"),
            usd=total("usd"),
        )
        .order_by("agent_name")
    )
    return {
        r["agent_name"]: {k: r[k] or 0 for k in ("input_tokens", "output_tokens", "usd")}
        for r in rows
    }
