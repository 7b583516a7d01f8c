"""The reviewer's queue of pending calls: filters in the URL, keyset pages, live rows."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode
from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from approvals import display, selectors
from approvals.forms import QueueFilterForm
from approvals.selectors import ORDERS
from approvals.views.common import AuthedRequest, wants_partial
from core.polls import not_activity
from tools_registry.permissions import can_review

FILTER_KEYS = ("tool", "risk", "agent", "session", "age", "expiring", "order")


@require_GET
@login_required
@never_cache
@vary_on_headers("HX-Request")
def queue(request: AuthedRequest) -> HttpResponse:
    if "since" in request.GET:
        not_activity(request)  # the page refreshing its rows (only its polls carry since)
    form = QueueFilterForm(request.GET)
    form.is_valid()
    filters = form.filters()
    page = selectors.queue_page(
        user=request.user,
        filters=filters,
        after=form.cleaned_data.get("after") or "",
        before=form.cleaned_data.get("before") or "",
    )
    # Only the filters, never the cursor: pages, risk tabs and polling all start from here.
    kept = {k: request.GET[k] for k in FILTER_KEYS if request.GET.get(k)}
    # Rows that arrived after the page was first loaded are marked; the polls carry the time.
    since = _since(request.GET.get("since", ""))
    poll = request.GET.copy()
    poll["since"] = str(int(since.timestamp() * 1_000_000))
    context = {
        "page": page,
        "rows": [display.row(call) for call in page.calls],
        "since": since,
        "me": request.user.pk,
        "filters": filters,
        "form": form,
        "orders": ORDERS,
        "query": urlencode(kept),
        "risk_tabs": _risk_tabs(page, kept),
        "pending_count": page.counts_total,
        "attention_count": selectors.attention_count(request.user),
        "attention_cap": selectors.ATTENTION_COUNT_CAP,
        "poll_seconds": settings.APPROVALS_QUEUE_POLL_SECONDS,
        "poll_url": f"{request.path}?{poll.urlencode()}",
    }
    context["partial"] = wants_partial(request)
    template = "approvals/queue.html#queue-table" if context["partial"] else "approvals/queue.html"
    return render(request, template, context)


def _since(raw: str) -> datetime:
    """When the reviewer first loaded the page (a poll carries it), or now."""
    try:
        return datetime.fromtimestamp(int(raw) / 1_000_000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return timezone.now()


def _risk_tabs(page: selectors.QueuePage, kept: dict[str, str]) -> list[dict[str, object]]:
    """All / Write / Destructive with their counts under the other filters; past the cap
    the counts are lower bounds, shown with a "+"."""
    others = {k: v for k, v in kept.items() if k != "risk"}
    total = min(sum(page.counts.values()), page.count_cap)
    tabs: list[dict[str, object]] = [
        {"risk": "", "label": "All", "count": total, "query": urlencode(others)}
    ]
    for risk in selectors.QUEUE_RISKS:
        tabs.append(
            {
                "risk": str(risk),
                "label": risk.label,
                "count": page.counts[risk],
                "query": urlencode({**others, "risk": str(risk)}),
            }
        )
    return tabs


@require_GET
@login_required
def next_call(request: AuthedRequest) -> HttpResponse:
    """Open the next call waiting for this reviewer (oldest first), or the queue if none."""
    after = None
    try:
        after_id = UUID(request.GET.get("after", ""))
    except ValueError:
        after_id = None
    if after_id is not None:
        # Only a position in the queue; nothing of that call is shown. A call of a tool
        # this reviewer may not review counts as none (where it lies would tell it exists).
        after = selectors.call_for_reviewer(request.user, after_id)
        if after is not None and not can_review(request.user, after.tool):
            after = None
    upcoming = selectors.next_call_for(request.user, after=after)
    if upcoming is None:
        return redirect("approvals:queue")
    return redirect("approvals:detail", pk=upcoming.pk)
