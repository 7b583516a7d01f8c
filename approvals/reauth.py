"""When the person behind a browser session last proved their password.

Stored in the session, not on the user: signing in on another device must not make an old
session count as fresh. Stamped at every sign-in (the ``user_logged_in`` signal; one through
the provider as of when the provider says the person signed in) and by the
re-authentication page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from accounts import oidc

SESSION_KEY = "countersign.authenticated_at"


def stamp(request: HttpRequest, *, when: datetime | None = None) -> None:
    request.session[SESSION_KEY] = (when or timezone.now()).timestamp()


def authenticated_at(request: HttpRequest) -> datetime | None:
    raw = request.session.get(SESSION_KEY)
    if not isinstance(raw, int | float):
        return None
    return datetime.fromtimestamp(raw, tz=UTC)


def is_recent(request: HttpRequest, *, now: datetime | None = None) -> bool:
    when = authenticated_at(request)
    if when is None:
        return False
    age = (now or timezone.now()) - when
    return age.total_seconds() <= settings.APPROVALS_REAUTH_WINDOW_SECONDS


def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Receiver of ``user_logged_in``: a password (or SSO) sign-in just happened. One through
    the provider is as recent as the person's sign-in there (the ID token's auth_time), not
    now: a provider holding their session passes it on without asking anything, so signing
    out and in again would otherwise stand in for the re-authentication it refuses."""
    if request is None or not hasattr(request, "session"):
        return
    sso, signed_in = oidc.through_provider(request)
    if not sso:
        stamp(request)
    elif signed_in is None:
        request.session.pop(SESSION_KEY, None)  # the provider does not say: not recent
    else:
        stamp(request, when=min(timezone.now(), datetime.fromtimestamp(signed_in, tz=UTC)))
