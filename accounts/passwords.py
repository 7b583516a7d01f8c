"""A person changing their own password: the one door for it (the account page, the admin's
"Change password"), and whether the password they sign in with is still one a superuser
chose for them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.forms import SetPasswordForm
from django.db import transaction
from django.forms import Form
from django.http import HttpRequest

from accounts import attempts, two_factor
from audit.log import record
from audit.models import AuditEvent

CHANGED_BY_OWNER = "changed_by_owner"


def asks_code(person: Any) -> bool:
    """Whether a change of the person's password asks for a code from their authenticator
    app too, as a re-authentication does: whoever held a verified session's cookie and the
    password must not, without the app, lock its owner out (and sign out their sessions)."""
    return two_factor.confirmed_device(person) is not None or two_factor.must_use_second_factor(
        person
    )


def change_own(request: HttpRequest, form: SetPasswordForm[Any]) -> None:
    """Save the new password of the person signed in (``form`` has checked the old one),
    audited as ``auth.password_set`` (never the password). This session stays signed in;
    every other session of theirs is signed out at its next request, as Django's sessions
    keep a hash of the password they signed in with."""
    with transaction.atomic():
        person = form.save()
        record(
            action="auth.password_set",
            actor=person,
            outcome=CHANGED_BY_OWNER,
            data={"user": person.get_username()},
            people=("user",),
        )
    update_session_auth_hash(request, person)


def ends_session(request: HttpRequest, form: Form) -> bool:
    """Whether a refused change of the person's own password signs their session out, as five
    wrong passwords at a re-authentication do (``accounts.attempts``, one count for both):
    its attempt came past the limit (refused unchecked), or a wrong old password or code
    brought it to the limit. Refused for its new password alone, the old one right, it was
    no guess: the session's attempts are taken back."""
    attempt = getattr(form, "attempt", 0)
    if form.has_error("old_password", "over_limit"):
        return True
    if not attempt:
        return False  # none counted: no old password sent, or Redis away
    if not form.has_error("old_password") and not form.has_error("code"):
        attempts.take_back(request)
        return False
    return bool(attempt >= attempts.MAX_FAILURES)


def chosen_by_a_superuser(person: Any) -> bool:
    """Whether the person's password is, as the trail tells, one a superuser chose (at the
    account's creation or since) and they have not changed since: whoever chose it can sign
    in as them. The trail knows the account by its name then: after a rename, nothing is
    found, and nothing is said."""
    if not person.has_usable_password():
        return False
    last = (
        AuditEvent.objects.filter(
            action__in=("auth.password_set", "auth.user_created"),
            data__user=person.get_username(),
        )
        .order_by("-id")
        .values_list("action", "outcome")
        .first()
    )
    return last in {("auth.password_set", "set_by_admin"), ("auth.user_created", "with_password")}
