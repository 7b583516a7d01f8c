"""Passwords a signed-in browser session tries: at a re-authentication
(``approvals.views.reauth``) and at a change of the person's own password (the account page,
the admin's "Change password"). Counted together, per session, in the cache (Redis): five
wrong ones in a row sign the session out, so a stolen session is no password-guessing oracle.
Without the count, it guessed on up to the account's lockout (django-axes), which then
locked its owner out as well; counted apart, it had five guesses at each page.
"""

from __future__ import annotations

from contextlib import suppress

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from redis import RedisError

# Wrong passwords in a row before the session is signed out.
MAX_FAILURES = 5
# What the page says while Redis is away (a 503).
UNCOUNTED = "Passwords cannot be checked for a moment; try again shortly."


class AttemptsUncounted(Exception):
    """The cache that counts attempts (Redis) is unreachable: no password is checked
    uncounted, or a stolen session would guess on for as long as Redis is away."""


def _key(request: HttpRequest) -> str:
    return f"password-attempts:{request.session.session_key}"


def count(request: HttpRequest) -> int:
    """This attempt's number among the session's since it last signed in, re-authenticated or
    changed its password (each gives the session a new key, and with it a count from one).
    Counted in the cache, one atomic increment each, before the password is checked: kept
    in the session, attempts sent side by side each read the count as it was before any of
    them and wrote it one higher, so a stolen session tried as many passwords as it sent
    at once, never signed out."""
    key = _key(request)
    try:
        cache.add(key, 0, timeout=settings.SESSION_MAX_AGE_SECONDS)
        return int(cache.incr(key))
    except RedisError as error:
        raise AttemptsUncounted from error


def take_back(request: HttpRequest) -> None:
    """The session's attempts proved its password after all (a change of it refused only for
    the new one): none was a guess. Counted, a person trying new passwords the validators
    refuse was signed out at the fifth. Left counted if Redis is away: an inconvenience."""
    with suppress(RedisError):
        cache.delete(_key(request))
