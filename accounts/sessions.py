"""How long a person's session lasts: ``SESSION_MAX_AGE_SECONDS`` after they signed in, and
``SESSION_IDLE_SECONDS`` after their last request (noted to the minute). Enforced on the server
(``accounts.middleware.SessionLimitsMiddleware``): a cookie's age is only what the browser
is asked to keep.

A page that polls by itself (the queue's refresh, a call page's live check) is not the
person: its view says so (``core.polls.not_activity``), or a tab left open would keep its session
for ever. Such a request still ends a session that is over, so the tab lands on sign-in.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.http import HttpRequest
from django.utils import timezone

from accounts.two_factor import SIGNED_IN_AT_KEY
from core.polls import is_poll

# In the session: when the person last made a request (epoch seconds).
ACTIVE_AT_KEY = "countersign.active_at"


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def over(request: HttpRequest) -> str | None:
    """Why this signed-in session is over (``max_age``, ``idle``), or None."""
    session, now = request.session, timezone.now().timestamp()
    signed_in = _seconds(session.get(SIGNED_IN_AT_KEY))
    if signed_in is None:
        # A session signed in before sign-ins were noted in it: its age counts from now.
        session[SIGNED_IN_AT_KEY] = signed_in = now
    if now - signed_in > settings.SESSION_MAX_AGE_SECONDS:
        return "max_age"
    active = max(signed_in, _seconds(session.get(ACTIVE_AT_KEY)) or 0)
    if now - active > settings.SESSION_IDLE_SECONDS:
        return "idle"
    return None


# Activity is noted at most this often: each note is a write of the session's row.
ACTIVITY_NOTED_EVERY_SECONDS = 60


def note_activity(request: HttpRequest) -> None:
    """The person made this request, unless its view said it is a poll."""
    if request.user.is_authenticated and not is_poll(request):
        now = timezone.now().timestamp()
        noted = _seconds(request.session.get(ACTIVE_AT_KEY)) or 0
        if now - noted >= ACTIVITY_NOTED_EVERY_SECONDS:
            request.session[ACTIVE_AT_KEY] = now


def sign_out_everywhere(person: Any) -> int:
    """Delete every session signed in as ``person``; how many. Deactivating someone must
    end their sessions for good: Django only stops reading a session whose person is
    inactive, so the sessions (a stolen one among them) came back, signed in, the moment
    the account was made active again. A session's person is known only from its data, so
    each live session is read: deactivations are rare, and sessions a few thousand."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    sessions = store.get_model_class().objects.filter(expire_date__gt=timezone.now())
    theirs = str(person.pk)
    keys = [
        row.session_key
        for row in sessions.only("session_key", "session_data").iterator()
        if store().decode(row.session_data).get(SESSION_KEY) == theirs
    ]
    deleted, _ = sessions.filter(session_key__in=keys).delete()
    return int(deleted)
