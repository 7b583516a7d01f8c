"""Holds a session that must pass the second factor at the two-factor page until it has:
those who must use one, and anyone who turned one on."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode

from accounts.two_factor import must_pass_second_factor

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
            if request.headers.get("HX-Request"):
                # An htmx request would swap the two-factor page into a panel: go there whole.
                return HttpResponse(status=204, headers={"HX-Redirect": target})
            return HttpResponseRedirect(target)
        return self.get_response(request)
