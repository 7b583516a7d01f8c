"""What every reviewer view shares."""

from __future__ import annotations

from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django_htmx.middleware import HtmxDetails

from approvals import selectors
from approvals.models import ToolCall
from tools_registry.permissions import can_review


class AuthedRequest(HttpRequest):
    htmx: HtmxDetails


def call_or_403(request: HttpRequest, pk: UUID) -> ToolCall:
    """The call, if it exists (404) and the signed-in person may review its tool (403)."""
    call = selectors.call_for_reviewer(request.user, pk)
    if call is None:
        raise Http404("No such call.")
    if not can_review(request.user, call.tool):
        raise PermissionDenied
    return call


def wants_partial(request: AuthedRequest) -> bool:
    """An htmx swap asks for a fragment; a history restore (back button) needs the page."""
    return bool(request.htmx) and not request.htmx.history_restore_request
