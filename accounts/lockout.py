"""Login throttling: what a locked-out sign-in sees, and the lockout in the audit trail.

django-axes counts failed sign-ins per account and per client address and refuses every
sign-in (even with the right password) while either is locked; these are the two places
where Countersign shapes that: the page that says why and for how long, and the audit event.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt, AccessBase
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from audit.log import Claimed, record
from audit.receivers import attempted_name


class LockoutHandler(AxesDatabaseHandler):
    """django-axes' database handler, but a successful sign-in forgets only the failures
    made under the name that signed in. Axes forgets every failure matching any lockout
    parameter, the client address included: anyone with one working account could guess
    another's password nineteen times, sign in as themselves, and start again, without
    end and without a lockout in the trail."""

    def reset_user_attempts(
        self, request: HttpRequest, credentials: dict[str, Any] | None = None
    ) -> int:
        username = get_client_username(request, credentials)
        if not username:
            return 0
        deleted, _ = AccessAttempt.objects.filter(username=username).delete()
        return int(deleted)

    def user_login_failed(
        self,
        sender: Any,
        credentials: dict[str, Any],
        request: HttpRequest | None = None,
        **kwargs: Any,
    ) -> None:
        """As axes', noting first what this attempt found locked (``on_locked_out``)."""
        if request is not None:
            setattr(request, _LOCKED_BEFORE, self.locked(request, credentials))
        super().user_login_failed(sender, credentials, request, **kwargs)

    def locked(self, request: HttpRequest, credentials: dict[str, Any] | None) -> list[bool]:
        """For each lockout parameter (the account, the address): whether it is locked."""
        limit = settings.AXES_FAILURE_LIMIT
        return [
            (attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0) >= limit
            for attempts in self.get_user_attempts(request, credentials)
        ]


# On the request of a failed sign-in: what it found locked (``LockoutHandler.locked``).
_LOCKED_BEFORE = "countersign_locked_before"


def lockout_parameters(
    request_or_attempt: Any, credentials: dict[str, Any] | None = None
) -> list[str]:
    """AXES_LOCKOUT_PARAMETERS: per account and, separately, per address; a sign-in that
    names no account (single sign-on: the provider names the person only once it has
    answered) per address only. Axes counted those failures under the name None, one count
    for every address: a few refused codes from anywhere (a forger's, people's back
    buttons) refused every sign-in through the provider, everywhere."""
    if isinstance(request_or_attempt, AccessBase):
        named = bool(request_or_attempt.username)
    else:
        named = bool(get_client_username(request_or_attempt, credentials))
    return ["username", "ip_address"] if named else ["ip_address"]


def client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR only, as the trail's sign-in events: X-Forwarded-For is whatever the
    client chose to send, and trusting it would let an attacker pick whose address to lock."""
    return str(request.META.get("REMOTE_ADDR", ""))


def _duration(delta: timedelta) -> str:
    minutes = max(round(delta.total_seconds() / 60), 1)
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def lockout_message(request: HttpRequest) -> str:
    cool_off = get_cool_off(request) or timedelta(0)
    # Every attempt during the lockout restarts the cool-off, so it ends this long from now.
    until = timezone.now() + cool_off
    return (
        f"Sign-in is locked after {settings.AXES_FAILURE_LIMIT} failed attempts for this "
        f"account or from this address. Try again in {_duration(cool_off)}, after "
        f"{until:%H:%M} UTC; every attempt before then restarts the wait. An administrator "
        "can lift the lock sooner."
    )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in page again, with why and for how long (429)."""
    username = ""
    if isinstance(credentials, dict):
        username = str(credentials.get(get_user_model().USERNAME_FIELD) or "")
    form = AuthenticationForm(request, initial={"username": username})
    return render(
        request,
        "registration/login.html",
        {"form": form, "lockout": lockout_message(request), "next": request.POST.get("next", "")},
        status=429,
    )


def on_locked_out(
    sender: Any, request: HttpRequest | None, username: str | None, ip_address: str | None, **_: Any
) -> None:
    """Receiver of axes' ``user_locked_out``: the attempt that locked the account or the
    address. Axes sends it at every attempt past the limit too (each restarts the cool-off):
    those are failed sign-ins (``auth.login_failed``), not lockouts of their own."""
    if request is not None and hasattr(request, _LOCKED_BEFORE):
        credentials = getattr(request, "axes_credentials", None)
        now = LockoutHandler().locked(request, credentials)
        if not any(
            after and not before
            for before, after in zip(getattr(request, _LOCKED_BEFORE), now, strict=False)
        ):
            return
    label, known = attempted_name(str(username or ""))
    cool_off = get_cool_off(request) if request is not None else None
    record(
        action="auth.locked_out",
        actor=Claimed(label),
        outcome="locked",
        data={
            "ip": ip_address or "",
            "known_user": known,
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "cool_off_seconds": int(cool_off.total_seconds()) if cool_off else None,
        },
    )
