"""What the analytics page shows, read from the summary the sealer keeps of the trail
(``audit.rollups``: it survives renames and deletions of calls, tools and agents, as the
trail does). Days are UTC days; every read is bounded by the chosen window."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from statistics import median, quantiles
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from audit import anchor, chain, rollups
from audit.models import AuditEvent, DailyCount, DecisionLatency


def window(days: int) -> tuple[datetime, list[date]]:
    today = timezone.now().date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=timezone.get_current_timezone())
    return since, [first + timedelta(days=n) for n in range(days)]


def _counts(metric: str, since: datetime) -> Any:
    return DailyCount.objects.filter(metric=metric, day__gte=since.date())


def calls_per_tool_per_day(since: datetime) -> dict[str, dict[date, int]]:
    series: dict[str, dict[date, int]] = defaultdict(dict)
    for tool, day, count in _counts(rollups.CALLS, since).values_list("key", "day", "n"):
        series[tool][day] = count
    return dict(series)


@dataclass
class Latency:
    tool: str
    decided: int
    median_seconds: float
    p90_seconds: float


def approval_latency(since: datetime) -> list[Latency]:
    """Submission to the reviewers' final decision (approved or rejected), per tool; calls
    approved as they arrived, by a rule or a standing approval, waited for nobody."""
    decided = DecisionLatency.objects.filter(decided_at__gte=since)
    if connection.vendor == "postgresql":
        # The percentiles are computed where the rows are: one row per tool comes back.
        table = DecisionLatency._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT tool_name, count(*),"  # noqa: S608 - the model's own table name
                f" percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds),"
                f" percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds)"
                f" FROM {table} WHERE decided_at >= %s GROUP BY tool_name ORDER BY tool_name",
                [since],
            )
            return [Latency(tool, n, p50, p90) for tool, n, p50, p90 in cursor.fetchall()]
    per_tool: dict[str, list[float]] = defaultdict(list)
    for tool, seconds in decided.values_list("tool_name", "seconds"):
        per_tool[tool].append(seconds)
    result = []
    for tool, values in sorted(per_tool.items()):
        p90 = quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]
        result.append(Latency(tool, len(values), median(values), p90))
    return result


def verdicts(since: datetime, by: str) -> dict[str, dict[str, int]]:
    """Approve/reject counts of reviewers' votes, per tool (``by="tool_name"``) or reviewer."""
    metric = rollups.TOOL_VOTES if by == "tool_name" else rollups.REVIEWER_VOTES
    return _table(metric, since)


def outcomes(since: datetime) -> dict[str, dict[str, int]]:
    """Results per tool: succeeded, failed, unknown."""
    return _table(rollups.RESULTS, since)


def _table(metric: str, since: datetime) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(dict)
    rows = _counts(metric, since).values_list("key", "variant").annotate(total=Sum("n"))
    for key, variant, count in rows:
        table[key][variant] = int(count)
    return dict(sorted(table.items()))


def token_cost_per_agent(since: datetime) -> dict[str, dict[str, float]]:
    rows = (
        _counts(rollups.TOKENS, since)
        .values("key")
        .annotate(
            input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), usd=Sum("usd")
        )
        .order_by("key")
    )
    return {
        r["key"]: {k: r[k] or 0 for k in ("input_tokens", "output_tokens", "usd")} for r in rows
    }


@dataclass
class ChainStatus:
    last_verification: AuditEvent | None
    backlog: chain.SealBacklog
    head_seq: int
    head_hash: str
    last_anchor: anchor.Anchor | None
    anchor_matches: bool | None  # the anchored seq's hash in the database equals the anchor's
    anchor_error: str = ""


def chain_status() -> ChainStatus:
    """Cheap enough for every page view: indexed lookups and the anchor file's last line."""
    head_seq, head_hash = chain.chain_head()
    try:
        last = anchor.last_anchor(settings.AUDIT_ANCHOR_PATH)
        error = ""
    except (anchor.AnchorFileDamaged, OSError) as exc:
        last, error = None, str(exc)
    matches = chain.holds_anchor(last) if last is not None else None
    return ChainStatus(
        last_verification=AuditEvent.objects.filter(action="audit.chain_verified")
        .order_by("-id")
        .first(),
        backlog=chain.seal_backlog(),
        head_seq=head_seq,
        head_hash=head_hash,
        last_anchor=last,
        anchor_matches=matches,
        anchor_error=error,
    )
