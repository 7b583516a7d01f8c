"""Downloads of a filtered view, streamed, and the stand-alone verifier for them."""

from __future__ import annotations

from pathlib import Path

from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone

from audit import exports
from audit.filters import EventFilter
from audit.log import record
from audit.models import AuditEvent
from audit.views.common import auditor_view

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


@auditor_view
def export(request: HttpRequest, fmt: str) -> StreamingHttpResponse | HttpResponse:
    chosen = EventFilter.from_query(request.GET)
    if chosen.errors():
        return HttpResponse("; ".join(chosen.errors()), status=400, content_type="text/plain")
    # Who took which part of the trail out, committed (the view runs in autocommit) before
    # the first byte leaves: a download cut short, or a worker that dies mid-stream, is still
    # on record. No row count: it is known only at the stream's end. The export's rows are
    # read after this, so an export whose filters match it holds its own event.
    record(
        action="audit.exported",
        actor=request.user,
        outcome=fmt,
        data={"format": fmt, "filters": chosen.active},
    )
    events = chosen.apply(AuditEvent.objects.all())  # the whole view, not one page
    response = StreamingHttpResponse(exports.stream(events, fmt), content_type=CONTENT_TYPES[fmt])
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="countersign-audit-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


@auditor_view
def verifier_script(request: HttpRequest) -> FileResponse:
    path = Path(exports.__file__).with_name("verify_export.py")
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename="verify_export.py",
        content_type="text/x-python",
    )
