"""When the person behind a browser session last proved their password.

Stored in the session, not on the user: signing in on another device must not make an old
session count as fresh. Stamped at every sign-in (the ``user_logged_in`` signal) and by the
re-authentication page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

SESSION_KEY = "countersign.authenticated_at"
FAILURES_KEY = "countersign.reauth_failures"


def stamp(request: HttpRequest, *, when: datetime | None = None) -> None:
    request.session[SESSION_KEY] = (when or timezone.now()).timestamp()
    request.session.pop(FAILURES_KEY, None)


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
    """Receiver of ``user_logged_in``: a password (or SSO) sign-in just happened."""
    if request is not None and hasattr(request, "session"):
        stamp(request)
