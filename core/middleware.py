"""Input no page of the admin can hold."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class AdminRefusesNulMiddleware:
    """A NUL character in a query or a form sent to the admin answers 400. Django's admin
    passes list filters and lookups (``?risk=%00``) to PostgreSQL as they come, which refuses
    a NUL in text: each of its list pages was a 500. Countersign's own pages check their
    input themselves; this is the admin's one door."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/admin/") and _holds_nul(request):
            return HttpResponseBadRequest(
                "The request holds a NUL character, which no field can store.",
                content_type="text/plain",
            )
        if request.path.startswith("/admin/") and _selects_no_row(request):
            return HttpResponseBadRequest(
                "An action was asked for on a row that is not one (not a number).",
                content_type="text/plain",
            )
        return self.get_response(request)


def _holds_nul(request: HttpRequest) -> bool:
    sent = [request.GET]
    if request.method == "POST" and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        sent.append(request.POST)
    return any(
        "\x00" in key or any("\x00" in value for value in values)
        for query in sent
        for key, values in query.lists()
    )


def _selects_no_row(request: HttpRequest) -> bool:
    """An action on a list's selection whose ids are not all numbers (every model in the
    admin has a numeric key): Django filters the list by them as they come, and each list
    with an action (revoke tokens, delete, stop agents) answered 500."""
    if request.method != "POST" or request.content_type not in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        return False
    return any(
        not (value.isascii() and value.isdigit())
        for value in request.POST.getlist(ACTION_CHECKBOX_NAME)
    )
