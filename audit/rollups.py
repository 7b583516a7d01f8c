"""The analytics summary, kept up to date by the sealer.

Counting the trail for every page view took seconds over a week of events (4.9 s over
600,000). Instead the sealer, which sees every event exactly once, folds each batch it
seals into ``DailyCount`` (per UTC day: calls per tool, votes per tool and per reviewer,
results per tool, token cost per agent) and ``DecisionLatency`` (one row per decided call),
in the same transaction as the seals: a batch is counted if and only if it is sealed, and a
row is sealed once, so nothing is counted twice or missed. The analytics page then reads a
few hundred summary rows (``audit.analytics``).

``rebuild()`` makes the summary again from the sealed events (the migration that added it,
and ``manage.py rebuild_audit_rollups`` after a restore).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Count, FloatField, Min, Sum, TextField, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, TruncDate

from audit.models import AuditEvent, DailyCount, DecisionLatency

CALLS, TOOL_VOTES, REVIEWER_VOTES, RESULTS, TOKENS = (
    "calls",
    "tool_votes",
    "reviewer_votes",
    "results",
    "tokens",
)
# How a run ends: its result, or the lease sweep's verdict on a worker that went silent
# (unknown for a write, failed for a read), which no result follows. What settles an
# unknown call later (reconciliation, a person, that worker's late result) is not a second
# end of the run.
RUN_ENDS = ("call.execution_finished", "call.lease_expired")
# The events the summary counts; every other action is skipped at once.
COUNTED = frozenset(
    {"call.submitted", "call.decision", "call.approved", "call.rejected", *RUN_ENDS}
)

# How a call is approved as it arrives, with no reviewer (``call.approved``'s ``by``): its
# zero-second "wait" is not a reviewer's latency and would pull the median down.
AUTOMATIC = ("rule", "standing_approval")

# Totals per (day, metric, key, variant): [n, input tokens, output tokens, usd].
Totals = dict[tuple[date, str, str, str], list[float]]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def fold(rows: Sequence[Sequence[Any]]) -> None:
    """Add a batch of just-sealed events to the summary. ``rows`` are the sealer's rows
    (``audit.chain.SEAL_COLUMNS``); call inside the sealing transaction."""
    totals: Totals = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    decided: list[tuple[UUID, str, datetime]] = []
    submitted_here: dict[UUID, datetime] = {}
    for row in rows:
        action = row[2]
        if action not in COUNTED:
            continue
        occurred_at, outcome, actor_label, agent, tool, call_id = (
            row[1], row[3], row[6], row[7], row[8], row[10],
        )  # fmt: skip
        day = occurred_at.date()
        if action == "call.submitted":
            totals[(day, CALLS, tool or "(none)", "")][0] += 1
            cost = json.loads(row[11]).get("token_cost") or {}
            if not isinstance(cost, dict):
                cost = {}
            entry = totals[(day, TOKENS, agent, "")]
            entry[0] += 1
            entry[1] += _number(cost.get("input_tokens"))
            entry[2] += _number(cost.get("output_tokens"))
            entry[3] += _number(cost.get("usd"))
            if call_id is not None:
                submitted_here[call_id] = occurred_at
        elif action == "call.decision":
            totals[(day, TOOL_VOTES, tool, outcome)][0] += 1
            totals[(day, REVIEWER_VOTES, actor_label, outcome)][0] += 1
        elif action in RUN_ENDS:
            totals[(day, RESULTS, tool, outcome)][0] += 1
        elif call_id is not None:  # approved or rejected: the decision that ended the wait
            if action == "call.approved" and _automatic(row[11]):
                continue
            decided.append((call_id, tool, occurred_at))
    _add(totals)
    _latencies(decided, submitted_here)


def _automatic(data_text: str) -> bool:
    data = json.loads(data_text)
    return isinstance(data, dict) and data.get("by") in AUTOMATIC


def _add(totals: Totals) -> None:
    if not totals:
        return
    table = DailyCount._meta.db_table
    rows = [(day, m, k, v, int(t[0]), t[1], t[2], t[3]) for (day, m, k, v), t in totals.items()]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
    # The same statement on PostgreSQL and SQLite: add to the day's row, or start it.
    sql = (
        f"INSERT INTO {table} (day, metric, key, variant, n, input_tokens, output_tokens, usd)"  # noqa: S608 - the model's own table name, placeholders
        f" VALUES {values} ON CONFLICT (day, metric, key, variant) DO UPDATE SET"
        f" n = {table}.n + excluded.n,"
        f" input_tokens = {table}.input_tokens + excluded.input_tokens,"
        f" output_tokens = {table}.output_tokens + excluded.output_tokens,"
        f" usd = {table}.usd + excluded.usd"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])


def _latencies(decided: list[tuple[UUID, str, datetime]], submitted: dict[UUID, datetime]) -> None:
    if not decided:
        return
    missing = [call_id for call_id, _, _ in decided if call_id not in submitted]
    if missing:
        # Most calls are decided minutes after they were proposed, in an earlier batch.
        rows = (
            AuditEvent.objects.filter(action="call.submitted", call_id__in=missing)
            .values("call_id")
            .annotate(at=Min("occurred_at"))
            .values_list("call_id", "at")
        )
        submitted.update((call_id, at) for call_id, at in rows if call_id is not None)
    latencies = [
        DecisionLatency(
            call_id=call_id,
            tool_name=tool,
            decided_at=decided_at,
            seconds=max((decided_at - submitted[call_id]).total_seconds(), 0.0),
        )
        for call_id, tool, decided_at in decided
        if call_id in submitted
    ]
    # A call is decided once; a later approval of the same call (a retry) keeps the first.
    DecisionLatency.objects.bulk_create(latencies, ignore_conflicts=True)


def rebuild() -> None:
    """The summary made again from every sealed event (unsealed ones are folded when the
    sealer gets to them). Call with the sealer's lock held (``audit.chain.rebuild_rollups``)
    so that no batch is sealed, and folded, in between."""
    DailyCount.objects.all().delete()
    DecisionLatency.objects.all().delete()
    sealed = AuditEvent.objects.filter(seq__isnull=False)
    totals: Totals = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    per_day = sealed.annotate(day=TruncDate("occurred_at"))

    def count(action: str, metric: str, key: str, variant: str | None) -> None:
        fields = [key] + ([variant] if variant else [])
        for item in per_day.filter(action=action).values("day", *fields).annotate(n=Count("id")):
            name = item[key] or ("(none)" if metric == CALLS else "")
            totals[(item["day"], metric, name, item[variant] if variant else "")][0] += item["n"]

    count("call.submitted", CALLS, "tool_name", None)
    count("call.decision", TOOL_VOTES, "tool_name", "outcome")
    count("call.decision", REVIEWER_VOTES, "actor_label", "outcome")
    for action in RUN_ENDS:
        count(action, RESULTS, "tool_name", "outcome")

    def total(key: str) -> Sum:
        return Sum(Cast(KT(f"data__token_cost__{key}"), FloatField()))

    for item in (
        per_day.filter(action="call.submitted")
        .values("day", "agent_name")
        .annotate(
            n=Count("id"),
            input_tokens=total("input_tokens"),
            output_tokens=total("output_tokens"),
            usd=total("usd"),
        )
    ):
        totals[(item["day"], TOKENS, item["agent_name"], "")] = [
            item["n"],
            item["input_tokens"] or 0.0,
            item["output_tokens"] or 0.0,
            item["usd"] or 0.0,
        ]
    for chunk in _chunks(list(totals.items()), 2000):
        _add(dict(chunk))
    decisions = (
        sealed.filter(action__in=["call.approved", "call.rejected"])
        .exclude(call_id=None)
        # Coalesced: NOT (... IN ...) of a missing key is NULL, which would drop the row.
        .annotate(by=Coalesce(KT("data__by"), Value(""), output_field=TextField()))
        .exclude(action="call.approved", by__in=AUTOMATIC)
        .order_by("id")
        .values_list("call_id", "tool_name", "occurred_at")
    )
    batch: list[tuple[UUID, str, datetime]] = []
    for call_id, tool, decided_at in decisions.iterator(chunk_size=5000):
        if call_id is not None:  # excluded above; said again for the type checker
            batch.append((call_id, tool, decided_at))
        if len(batch) == 5000:
            _latencies(batch, {})
            batch = []
    _latencies(batch, {})


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
