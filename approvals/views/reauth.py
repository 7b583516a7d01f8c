"""Re-entering the password (and the second factor's code, for people who have one, or
must) before a destructive approval: a "sudo mode" for reviewers."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from accounts import attempts, two_factor
from accounts.navigation import next_url
from approvals import reauth
from approvals.forms import ReauthForm
from approvals.views.common import AuthedRequest
from audit.log import record


def _next_url(request: AuthedRequest) -> str:
    return next_url(request, otherwise=reverse("approvals:queue"))


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
@login_required
@never_cache
def reauthenticate(request: AuthedRequest) -> HttpResponse:
    form = ReauthForm(request.POST or None)
    error = ""
    wants_code = two_factor.confirmed_device(
        request.user
    ) is not None or two_factor.must_use_second_factor(request.user)
    if request.method == "POST" and form.is_valid():
        # This one's number since the session's last success, counted with the changes of
        # password it tried (``accounts.attempts``): its failures if it fails.
        try:
            failures = attempts.count(request)
        except attempts.AttemptsUncounted:
            return _page(request, form, error=attempts.UNCOUNTED, wants_code=wants_code, status=503)
        if failures > attempts.MAX_FAILURES:
            # Sent beside the attempt that reached the limit: signed out unchecked.
            logout(request)
            return redirect("login")
        user = authenticate(
            request,
            username=request.user.get_username(),
            password=form.cleaned_data["password"],
        )
        password_ok = user is not None and user.pk == request.user.pk
        # The code is checked only after the right password: a wrong password must not
        # spend the device's throttle, and a stolen session cannot test codes alone.
        code_ok = not wants_code or (
            password_ok
            and two_factor.verify(
                request=request, token=form.cleaned_data["code"], purpose="reauthentication"
            )
        )
        if password_ok and code_ok:
            # A new session key, as at any sign-in: a fixated key gains nothing.
            request.session.cycle_key()
            reauth.stamp(request)
            record(action="reviewer.reauthenticated", actor=request.user, outcome="ok")
            return HttpResponseRedirect(_next_url(request))
        record(
            action="reviewer.reauthentication_failed",
            actor=request.user,
            outcome="wrong_password" if not password_ok else "wrong_code",
            data={"failures": failures},
        )
        if failures >= attempts.MAX_FAILURES:
            logout(request)
            return redirect("login")
        error = (
            "That is not your password."
            if not password_ok
            else "That code was not accepted; wait for the next one."
        )
    return _page(request, form, error=error, wants_code=wants_code)


def _page(
    request: AuthedRequest, form: ReauthForm, *, error: str, wants_code: bool, status: int = 200
) -> HttpResponse:
    sso_url = ""
    person = request.user
    if settings.OIDC_ENABLED and person.is_authenticated and not person.has_usable_password():
        # A person who signs in only through the provider proves it there again (asked to
        # sign in anew); the new sign-in stamps the session (``reauth.on_login``).
        query = urlencode({"next": _next_url(request), "reauthenticate": "1"})
        sso_url = f"{reverse('oidc_authentication_init')}?{query}"
    return render(
        request,
        "approvals/reauth.html",
        {
            "form": form,
            "error": error,
            "next": _next_url(request),
            "wants_code": wants_code,
            "sso_url": sso_url,
        },
        status=status,
    )
