"""Ends a session that is over (``accounts.sessions``), and holds one that must pass the
second factor at the two-factor page until it has: those who must use one, and anyone who
turned one on."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import auth
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import reverse
from django.utils.http import urlencode

from accounts import sessions
from accounts.two_factor import must_pass_second_factor
from audit.receivers import SIGN_OUT_REASON

# What an unverified reviewer may still reach: the two-factor pages, signing out, the
# static files those pages need. The agent API and /mcp authenticate agents, not sessions.
OPEN_PREFIXES = ("/account/two-factor/", "/logout/", "/static/", "/healthz", "/api/", "/mcp")


class SecondFactorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if (
            user.is_authenticated
            # django-otp's OTPMiddleware: a device passed in this session.
            and not user.is_verified()  # type: ignore[union-attr,attr-defined]
            and not request.path.startswith(OPEN_PREFIXES)
            and must_pass_second_factor(user)
        ):
            target = (
                f"{reverse('accounts:two_factor')}?{urlencode({'next': request.get_full_path()})}"
            )
            return go_to(request, target)
        return self.get_response(request)


def go_to(request: HttpRequest, target: str) -> HttpResponse:
    if request.headers.get("HX-Request"):
        # An htmx request would swap the page into a panel (or, polling, drop it): go whole.
        return HttpResponse(status=204, headers={"HX-Redirect": target})
    return HttpResponseRedirect(target)


class SessionLimitsMiddleware:
    """Signs out a session that is over (audited as ``auth.logout``, with its reason) and
    sends the person to sign in again, back to the page they were on; notes each of their
    other requests as activity. A request of a page polling a session that ended elsewhere
    (signed out in another tab) goes to sign in too, rather than poll on unanswered."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated and (reason := sessions.over(request)):
            page = _page(request)
            setattr(request, SIGN_OUT_REASON, reason)
            auth.logout(request)
            query = {"session": "ended", **({"next": page} if page else {})}
            return go_to(request, f"{resolve_url(settings.LOGIN_URL)}?{urlencode(query)}")
        response = self.get_response(request)
        sessions.note_activity(request)
        sign_in = resolve_url(settings.LOGIN_URL)
        if (
            request.headers.get("HX-Request")
            and response.status_code == 302
            and urlsplit(response.get("Location", "")).path == sign_in
        ):
            return go_to(request, response["Location"])
        return response


def _page(request: HttpRequest) -> str:
    """The page the person was on: the one an htmx request came from, or this one if it can
    be opened again (a GET)."""
    if current := request.headers.get("HX-Current-URL"):
        try:
            parts = urlsplit(current)
        except ValueError:  # no URL (an unclosed "http://["): no page, not a 500
            return ""
        return f"{parts.path}?{parts.query}" if parts.query else parts.path
    return request.get_full_path() if request.method == "GET" else ""
