"""Reads for the reviewer UI: the queue, the next call, a call and its session. Nothing
here writes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import (
    BigIntegerField,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from approvals.guards import approvals_that_stand_on
from approvals.models import Decision, Status, ToolCall, Verdict
from tools_registry.models import Agent, Tool
from tools_registry.permissions import reviewable_tools
from tools_registry.policy import Risk

# --- The reviewer's queue ------------------------------------------------------------------

QUEUE_RISKS = (Risk.WRITE, Risk.DESTRUCTIVE)  # reads never wait for a reviewer
AGES = {"5m": 5 * 60, "1h": 60 * 60, "1d": 24 * 60 * 60}


@dataclass(frozen=True)
class QueueFilters:
    """What the reviewer narrowed the queue to; every field round-trips through the URL."""

    tool: str = ""
    risk: str = ""
    agent: str = ""
    session: str = ""
    age: str = ""  # a key of AGES: waiting longer than that
    expiring: bool = False
    order: str = "oldest"  # a key of SORTS

    @property
    def newest_first(self) -> bool:
        return self.order == "newest"


@dataclass(frozen=True)
class Sort:
    """One order of the queue: the key it sorts by (then the id), and which way."""

    key: Any  # an expression over the call's row
    descending: bool
    timestamps: bool  # the key is a time (a cursor carries it as microseconds)


ORDERS = [
    ("oldest", "Oldest first"),
    ("newest", "Newest first"),
    ("expiring", "Expiring first"),
    ("amount", "Largest amount first"),
]
# Calls without an amount sort after every amount (the partial index has the same key).
NO_AMOUNT = -1
SORTS = {
    "oldest": Sort(F("created_at"), descending=False, timestamps=True),
    "newest": Sort(F("created_at"), descending=True, timestamps=True),
    "expiring": Sort(F("expires_at"), descending=False, timestamps=True),
    "amount": Sort(
        Coalesce(F("amount_minor"), Value(NO_AMOUNT), output_field=BigIntegerField()),
        descending=True,
        timestamps=False,
    ),
}


@dataclass(frozen=True)
class Cursor:
    """A keyset position: a row's sort key and id. No OFFSET, so depth costs nothing."""

    key: datetime | int
    id: UUID

    def token(self) -> str:
        key = self.key
        raw = int(key.timestamp() * 1_000_000) if isinstance(key, datetime) else int(key)
        return f"{raw}_{self.id}"

    @classmethod
    def parse(cls, token: str, sort: Sort | None = None) -> Cursor | None:
        raw, _, raw_id = token.partition("_")
        try:
            number = int(raw)
            key: datetime | int = (
                datetime.fromtimestamp(number / 1_000_000, tz=UTC)
                if sort is None or sort.timestamps
                else number
            )
            return cls(key=key, id=UUID(raw_id))
        except (ValueError, OverflowError, OSError):
            return None

    @classmethod
    def of(cls, call: ToolCall, sort: Sort | None = None) -> Cursor:
        key = getattr(call, "sort_key", None) if sort is not None else None
        return cls(key=call.created_at if key is None else key, id=call.pk)


@dataclass
class QueuePage:
    calls: Sequence[ToolCall]
    tools: list[Tool]  # the tools the reviewer may review (the filter's choices)
    agents: list[Agent]  # agents that may call those tools (the filter's choices)
    counts: dict[str, int]  # per risk class, among the first ``count_cap + 1`` calls
    count_cap: int
    capped: bool  # more than ``count_cap`` calls: the counts are lower bounds
    next_cursor: str = ""  # further along in the current order
    prev_cursor: str = ""  # back towards the start
    unknown_filter: bool = False  # a tool or agent name that is not (or no longer) there

    @property
    def counts_total(self) -> int:
        """Every class together, capped like the counts."""
        return min(sum(self.counts.values()), self.count_cap)


def _filtered(
    filters: QueueFilters, tool_ids: list[int], agents: list[Agent], now: datetime
) -> QuerySet[ToolCall]:
    """Pending calls of ``tool_ids`` matching every filter but the tool and the risk class."""
    # A literal id list, not a subquery: the planner then sees a plain filter and walks the
    # partial pending index in order, stopping after one page.
    calls = ToolCall.objects.filter(status=Status.PENDING, tool_id__in=tool_ids)
    if filters.agent:
        calls = calls.filter(agent_id__in=[a.pk for a in agents if a.name == filters.agent])
    if filters.session:
        calls = calls.filter(session_id=filters.session)
    if filters.age in AGES:
        calls = calls.filter(created_at__lte=now - timedelta(seconds=AGES[filters.age]))
    if filters.expiring:
        soon = now + timedelta(seconds=settings.APPROVALS_EXPIRING_SOON_SECONDS)
        # Overdue calls are as good as expired (the sweep is on its way): not "soon".
        calls = calls.filter(expires_at__gt=now, expires_at__lte=soon)
    return calls


def _of_risk(
    filters: QueueFilters, risk: str, tools: list[Tool], agents: list[Agent], now: datetime
) -> QuerySet[ToolCall]:
    """Calls of one risk class (or of every class for ``""``) under the filters.

    Narrowed to the tools of that class as well as by the call's own risk, so that the
    tool's index (not a walk over every pending call) answers when the filters leave few:
    a call's risk is its tool's, and a tool whose risk changed has a new version, which no
    approval of its older calls can pass anyway.
    """
    chosen = [t for t in tools if not filters.tool or t.name == filters.tool]
    calls = _filtered(filters, [t.pk for t in chosen if not risk or t.risk == risk], agents, now)
    return calls.filter(risk=risk) if risk else calls


def _risk_counts(calls: QuerySet[ToolCall], cap: int) -> tuple[dict[str, int], bool]:
    """Calls per risk class among the first ``cap + 1`` under the filters, and whether there
    were more. One streaming walk of the same ordered index as the page, stopped at the cap:
    a count that stopped at a class's own cap would read every row of the other class first
    when the filters leave it few or none."""
    first = calls.order_by("created_at", "id").values_list("risk", flat=True)[: cap + 1]
    seen = Counter(first)
    capped = sum(seen.values()) > cap
    return {str(risk): seen.get(risk, 0) for risk in QUEUE_RISKS}, capped


def _after(cursor: Cursor, descending: bool, key: str = "created_at") -> Q:
    """Rows strictly past ``cursor`` in the given order of ``key`` (a field or the
    ``sort_key`` annotation). The redundant bound on the key gives the index scan a start
    key; the OR then only breaks ties."""
    at = cursor.key
    if descending:
        return Q(**{f"{key}__lte": at}) & (
            Q(**{f"{key}__lt": at}) | Q(**{key: at, "id__lt": cursor.id})
        )
    return Q(**{f"{key}__gte": at}) & (
        Q(**{f"{key}__gt": at}) | Q(**{key: at, "id__gt": cursor.id})
    )


def queue_page(
    *,
    user: Any,
    filters: QueueFilters,
    after: str = "",
    before: str = "",
    page_size: int | None = None,
    now: datetime | None = None,
) -> QueuePage:
    """One page of the reviewer's queue, with counts per risk class.

    A fixed number of queries whatever the page holds: the tools and agents for the filter
    choices, one capped count per risk class, and the page itself with its vote counts.
    """
    now = now or timezone.now()
    page_size = page_size or settings.APPROVALS_QUEUE_PAGE_SIZE
    cap = settings.APPROVALS_QUEUE_COUNT_CAP
    tools = list(reviewable_tools(user).order_by("name"))
    agents = list(
        Agent.objects.filter(allowed_tools__in=[t.pk for t in tools]).distinct().order_by("name")
    )
    unknown = bool(filters.tool and not any(t.name == filters.tool for t in tools)) or bool(
        filters.agent and not any(a.name == filters.agent for a in agents)
    )
    # Counting a million rows takes as long as a million rows: stop at the cap instead.
    counts, capped = _risk_counts(_of_risk(filters, "", tools, agents, now), cap)

    sort = SORTS.get(filters.order, SORTS["oldest"])
    rows = _of_risk(filters, filters.risk, tools, agents, now).annotate(sort_key=sort.key)
    backwards = bool(before) and not after
    cursor = Cursor.parse(after or before, sort) if (after or before) else None
    # Walking back towards the start is the same walk in the opposite order, then reversed.
    walk_descending = sort.descending != backwards
    if cursor is not None:
        rows = rows.filter(_after(cursor, walk_descending, "sort_key"))
    order = ["-sort_key", "-id"] if walk_descending else ["sort_key", "id"]
    approvals = (
        Decision.objects.filter(
            call=OuterRef("pk"), verdict=Verdict.APPROVE, arguments_hash=OuterRef("arguments_hash")
        )
        .values("call")
        .annotate(n=Count("pk"))
        .values("n")
    )
    rows = (
        rows.select_related("tool", "agent")
        .annotate(
            approval_count=Coalesce(Subquery(approvals, output_field=IntegerField()), 0),
            # On the arguments as they are: a correction asks everyone to vote again.
            voted=Exists(
                Decision.objects.filter(
                    call=OuterRef("pk"),
                    reviewer_id=user.pk,
                    arguments_hash=OuterRef("arguments_hash"),
                )
            ),
        )
        .order_by(*order)
    )
    fetched = list(rows[: page_size + 1])
    more = len(fetched) > page_size
    calls = fetched[:page_size]
    # A waiting call with its quorum of approvals given has some that no longer stand
    # (``guards.approvals_now``): only those rows are checked, all of them at once.
    full = [call for call in calls if call.approval_count >= call.approvals_required > 0]
    standing = approvals_that_stand_on(full)
    for call in full:
        call.approval_count = standing[call.pk]
    if backwards:
        calls.reverse()
    page = QueuePage(
        calls=calls,
        tools=tools,
        agents=agents,
        counts=counts,
        count_cap=cap,
        capped=capped,
        unknown_filter=unknown,
    )
    if calls:
        # Forward: another page exists past the last row when we fetched one extra going
        # forward, or always when we came backwards (we came from there).
        if more or backwards:
            page.next_cursor = Cursor.of(calls[-1], sort).token()
        if cursor is not None and (not backwards or more):
            page.prev_cursor = Cursor.of(calls[0], sort).token()
    return page


def next_call_for(user: Any, *, after: ToolCall | None = None) -> ToolCall | None:
    """The next pending call, oldest first, that ``user`` may review and has not voted on
    as its arguments are now (a correction asks everyone to vote again).

    Starts after ``after`` and wraps round to the oldest; never returns ``after`` itself.
    """
    tool_ids = list(reviewable_tools(user).values_list("pk", flat=True))
    candidates = (
        ToolCall.objects.filter(status=Status.PENDING, tool_id__in=tool_ids)
        .exclude(
            Exists(
                Decision.objects.filter(
                    call=OuterRef("pk"),
                    reviewer_id=user.pk,
                    arguments_hash=OuterRef("arguments_hash"),
                )
            )
        )
        .order_by("created_at", "id")
    )
    if after is None:
        return candidates.first()
    later = candidates.filter(_after(Cursor.of(after), descending=False)).first()
    return later or candidates.exclude(pk=after.pk).first()


def session_history(call: ToolCall, *, limit: int = 20) -> list[ToolCall]:
    """The calls the same agent made earlier in the same session, newest first."""
    return list(
        ToolCall.objects.filter(
            agent_id=call.agent_id, session_id=call.session_id, created_at__lt=call.created_at
        )
        .exclude(pk=call.pk)
        .select_related("tool")
        .order_by("-created_at")[:limit]
    )


# What a call's page or card shows with it: every verdict and note, with who wrote it
# (fetched with the calls, not a query per note or per call).
SHOWN_WITH_A_CALL = ("decisions__reviewer", "notes__author")


def call_for_reviewer(user: Any, call_id: UUID) -> ToolCall | None:
    """The call, if ``user`` may review its tool; None otherwise (the view answers 403/404)."""
    return (
        ToolCall.objects.select_related("tool", "agent__owner")
        .prefetch_related(*SHOWN_WITH_A_CALL)
        .filter(pk=call_id)
        .first()
    )


# --- Needs attention -----------------------------------------------------------------------

ATTENTION_COUNT_CAP = 99


def calls_needing_attention(user: Any) -> QuerySet[ToolCall]:
    """Unknown calls and escalated failures of the tools ``user`` may review, oldest first."""
    return (
        ToolCall.objects.filter(
            Q(status=Status.UNKNOWN) | Q(status=Status.FAILED, needs_attention=True),
            tool__in=reviewable_tools(user),
        )
        .select_related("tool", "agent")
        .order_by("updated_at", "id")
    )


def attention_page(user: Any, limit: int) -> list[ToolCall]:
    """The first ``limit`` calls needing attention, with what each call's card shows."""
    return list(calls_needing_attention(user).prefetch_related(*SHOWN_WITH_A_CALL)[:limit])


def attention_count(user: Any) -> int:
    """How many calls need a person, up to ``ATTENTION_COUNT_CAP`` (shown as "99+")."""
    return len(
        calls_needing_attention(user).values_list("pk", flat=True)[: ATTENTION_COUNT_CAP + 1]
    )
