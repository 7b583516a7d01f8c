"""Where a page sends the person back to once they have done what it asked."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def next_url(request: HttpRequest, *, otherwise: str) -> str:
    """The request's ``next`` when it is a URL on this site, else ``otherwise``. Answer it
    with HttpResponseRedirect, never redirect(), which looks a bare word (next=abc) up as a
    view's name (a 500)."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return otherwise
