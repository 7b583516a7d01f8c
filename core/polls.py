"""Requests a page makes by itself (a refresh, a progress check), told apart from the
person's own: ``accounts.sessions`` counts only the person's as activity. Here, below every
app, so that any view can say so."""

from __future__ import annotations

from django.http import HttpRequest

_POLL_ATTR = "countersign_poll"


def not_activity(request: HttpRequest) -> None:
    """This request is the page polling by itself: it keeps nobody's session alive."""
    setattr(request, _POLL_ATTR, True)


def is_poll(request: HttpRequest) -> bool:
    return bool(getattr(request, _POLL_ATTR, False))
