"""The trail, filtered by what the URL says, newest first."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from audit.catalogue import ACTIONS
from audit.filters import KINDS, EventFilter
from audit.views.common import auditor_view

PAGE_SIZE = 100


@auditor_view
def events(request: HttpRequest) -> HttpResponse:
    """Keyset-paginated on id (no OFFSET): the 1000th page costs what the first does."""
    chosen = EventFilter.from_query(request.GET)
    problems = chosen.errors()
    page, next_before = ([], None) if problems else chosen.page(PAGE_SIZE)
    context = {
        "filter": chosen,
        "problems": problems,
        "events": page,
        "next_query": chosen.query_string(before=next_before) if next_before else "",
        "first_query": chosen.query_string(before=None),
        "export_query": chosen.query_string(before=None),
        "actions": sorted(ACTIONS),
        "kinds": [(key, label) for key, (label, _) in KINDS.items()],
    }
    template = (
        "audit/events.html#results" if getattr(request, "htmx", False) else "audit/events.html"
    )
    return render(request, template, context)
