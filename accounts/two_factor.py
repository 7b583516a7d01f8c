"""The second factor: TOTP devices (django-otp), who must have one, and the audited steps.

A password (or SSO) sign-in makes a session authenticated; passing a TOTP code makes it
*verified* (django-otp keeps the device in the session) until its next sign-in. With
``REQUIRE_2FA`` on, reviewers and admins can do nothing but enrol or verify until their
session is verified (``accounts.middleware``), and the re-authentication before a
destructive approval asks for a fresh code as well as the password.
"""

from __future__ import annotations

import time
from typing import Any

import segno
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.log import record
from tools_registry.permissions import has_any_review_grant

DEVICE_NAME = "authenticator app"
# A code entered this recently lets the session replace the app, and a sign-in this recent
# lets it set up a first one: a session verified or signed in hours ago (a stolen cookie)
# must not swap in an app of its holder's, and the owner's be gone or be asked for ever.
FRESH_CODE_SECONDS = 15 * 60
PASSED_AT_KEY = "countersign.second_factor_passed_at"
# When this session signed in (a password or single sign-on), in epoch seconds.
SIGNED_IN_AT_KEY = "countersign.signed_in_at"
# The unconfirmed device this session set up (its pk): the only one it shows or confirms.
PENDING_KEY = "countersign.pending_device"


def must_use_second_factor(user: Any) -> bool:
    """Reviewers (anyone granted a tool, directly or through a team) and admins, when
    ``REQUIRE_2FA`` is on. Auditors and others only read; they may enrol all the same."""
    if not settings.REQUIRE_2FA or not user.is_authenticated:
        return False
    return bool(user.is_staff or user.is_superuser or has_any_review_grant(user))


def must_pass_second_factor(user: Any) -> bool:
    """Whether a session must pass a code before anything else: those who must use one, and
    anyone who turned one on (the page offers to add it to their sign-in, and a device
    asked nowhere would let the password alone in)."""
    if not user.is_authenticated:
        return False
    return must_use_second_factor(user) or (
        TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    )


def confirmed_device(user: Any, *, locked: bool = False) -> TOTPDevice | None:
    """The person's device; ``locked``: its row held until the transaction ends."""
    if not user.is_authenticated:
        return None
    devices = TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk")
    return (devices.select_for_update() if locked else devices).first()


def _pending(request: HttpRequest) -> QuerySet[TOTPDevice]:
    """The unconfirmed device this session set up, if it is still the person's. Not one
    another session set up: the person's first app was shown, secret and all, to any
    session of theirs signed in within ``FRESH_CODE_SECONDS``, so whoever had the password
    (or such a session's cookie) read the secret of the app its owner was setting up, and
    passed the second factor as them once the owner confirmed it, unseen."""
    pk = request.session.get(PENDING_KEY)
    if not isinstance(pk, int) or isinstance(pk, bool):
        return TOTPDevice.objects.none()
    return TOTPDevice.objects.filter(user=request.user, confirmed=False, pk=pk)


def pending_device(request: HttpRequest) -> TOTPDevice | None:
    return _pending(request).first()


def qr_code_data_uri(device: TOTPDevice) -> str:
    """The otpauth:// URL as an SVG QR code in a data: URI (the CSP allows data: images,
    and nothing about the secret leaves the page)."""
    return str(segno.make(device.config_url, error="m").svg_data_uri(scale=4, border=2))


def secret_for_typing(device: TOTPDevice) -> str:
    """The base32 secret in groups of four, for apps without a camera."""
    secret = str(device.config_url).split("secret=", 1)[1].split("&", 1)[0]
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


class EnrolmentRefused(Exception):
    """This session may not set up a new device (``may_enrol``)."""


def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Receiver of ``user_logged_in``: when this session signed in (``may_enrol``), and a
    sign-in is the password (or the provider) only: the code is asked again after it.
    Django keeps the session of a person signing in again as themselves, and with it the
    code it passed: whoever held a verified session's cookie and the password signed in
    again and was as recent as a re-authentication, which asks for a fresh code too."""
    if request is not None and hasattr(request, "session"):
        request.session.pop(DEVICE_ID_SESSION_KEY, None)
        request.session.pop(PASSED_AT_KEY, None)
        request.session[SIGNED_IN_AT_KEY] = time.time()


def _within_fresh_seconds(request: HttpRequest, key: str) -> bool:
    at = request.session.get(key)
    return isinstance(at, int | float) and time.time() - at <= FRESH_CODE_SECONDS


def may_enrol(request: HttpRequest) -> bool:
    """Whether this session may set up a new device: when the person has none yet and this
    session signed in within ``FRESH_CODE_SECONDS``, or when it passed the one they have
    within them. A password alone never replaces a second factor, nor does a session that
    passed it long ago: whoever held only the password, or the session's cookie, could
    otherwise swap in an app of their own (and the owner's would be gone). Nor does a
    session signed in long ago set up a first one: once an admin deleted a lost app, the
    cookie of a session it had verified (stolen with the phone) set up its holder's, and
    the owner, signing in anew, was asked for that app's codes."""
    user = request.user
    if confirmed_device(user) is None:
        return _within_fresh_seconds(request, SIGNED_IN_AT_KEY)
    return _within_fresh_seconds(request, PASSED_AT_KEY) and bool(user.is_verified())  # type: ignore[union-attr]


def _refuse_enrolment(request: HttpRequest) -> None:
    if not may_enrol(request):
        outcome = (
            "sign_in_too_old" if confirmed_device(request.user) is None else "replacement_refused"
        )
        record(action="auth.two_factor_failed", actor=request.user, outcome=outcome)
        raise EnrolmentRefused


def start_enrolment(*, request: HttpRequest) -> TOTPDevice:
    """A new unconfirmed device (a new secret), replacing any earlier unfinished one. It
    counts for nothing until a code from it is confirmed. ``EnrolmentRefused`` (audited)
    unless ``may_enrol``."""
    _refuse_enrolment(request)
    user = request.user
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
    request.session[PENDING_KEY] = device.pk
    return device


def confirm_enrolment(*, request: HttpRequest, token: str) -> bool:
    """The first code from the new device: the device is confirmed, replaces any earlier
    one, and this session counts as verified. ``EnrolmentRefused`` (audited) unless
    ``may_enrol``: a device set up in a verified session is confirmed only while the
    session still may."""
    _refuse_enrolment(request)
    with transaction.atomic():
        return _confirm(request, token)


def _confirm(request: HttpRequest, token: str) -> bool:
    user = request.user
    device = _pending(request).select_for_update().first()
    if device is None or not device.verify_token(token):
        record(action="auth.two_factor_failed", actor=user, outcome="enrolment_code_wrong")
        return False
    replaced = (
        TOTPDevice.objects.filter(user=user, confirmed=True).exclude(pk=device.pk).delete()[0]
    )
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    request.session.pop(PENDING_KEY, None)
    _pass(request, device)
    record(
        action="auth.two_factor_enrolled",
        actor=user,
        outcome="ok",
        data={"device": "totp", "replaced_devices": replaced},
    )
    return True


def _pass(request: HttpRequest, device: TOTPDevice) -> None:
    """The session is verified, under a new key: whoever knew the password-only session's
    key (a fixated or stolen one) must not hold the verified one, as at any sign-in."""
    request.session.cycle_key()
    otp_login(request, device)
    request.session[PASSED_AT_KEY] = time.time()


def verify(*, request: HttpRequest, token: str, purpose: str = "sign_in") -> bool:
    """A code from the person's confirmed device: the session is verified. django-otp
    throttles a device after wrong codes (each wrong one doubles the wait): one check at a
    time, the device's row locked, or codes sent side by side would all be checked against
    the throttle as it was before any of them (and a batch of wrong ones counted once)."""
    user = request.user
    with transaction.atomic():
        device = confirmed_device(user, locked=True)
        passed = device is not None and device.verify_token(token.strip().replace(" ", ""))
        if passed:
            _pass(request, device)
    if passed:
        record(action="auth.two_factor_verified", actor=user, outcome="ok", data={"for": purpose})
        return True
    record(
        action="auth.two_factor_failed",
        actor=user,
        outcome="no_device" if device is None else "wrong_code",
        data={"for": purpose},
    )
    return False
