"""A person's own page and the second factor: enrol, confirm, verify."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import PasswordChangeView
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_POST

from accounts import passwords, two_factor
from accounts.forms import CodeForm, CountedPasswordChangeForm, OwnPasswordForm
from accounts.navigation import next_url


def _next_url(request: HttpRequest) -> str:
    return next_url(request, otherwise=reverse("home"))


def _account_page(
    request: HttpRequest, password_form: OwnPasswordForm | None = None, status: int = 200
) -> HttpResponse:
    user = request.user
    assert user.is_authenticated  # login_required
    return render(
        request,
        "accounts/account.html",
        {
            "teams": sorted(user.groups.values_list("name", flat=True)),
            "device": two_factor.confirmed_device(user),
            "required": two_factor.must_use_second_factor(user),
            "verified": user.is_verified(),  # type: ignore[attr-defined]
            "may_enrol": two_factor.may_enrol(request),
            "sso_only": not user.has_usable_password(),
            "password_form": password_form or OwnPasswordForm(user, request=request),
            "wants_code": passwords.asks_code(user),
            "password_chosen_by_superuser": passwords.chosen_by_a_superuser(user),
        },
        status=status,
    )


@require_GET
@login_required
@never_cache
def account(request: HttpRequest) -> HttpResponse:
    return _account_page(request)


@sensitive_post_parameters("old_password", "new_password1", "new_password2")
@require_POST
@login_required
@never_cache
def change_password(request: HttpRequest) -> HttpResponse:
    """The person's own password: the old one counted as a sign-in (``OwnPasswordForm``),
    then the code, if they have an app or must (checked only after the right password, as
    at a re-authentication: a stolen session cannot test codes alone, nor spend the app's
    throttle). An account without a password signs in through its provider: nothing to
    change here, and none is set (whoever set one could sign in without the provider)."""
    user = request.user
    assert user.is_authenticated  # login_required
    if not user.has_usable_password():
        return _account_page(request, status=403)
    form = OwnPasswordForm(user, request.POST, request=request)
    if form.is_valid():
        if not passwords.asks_code(user) or two_factor.verify(
            request=request, token=form.cleaned_data["code"], purpose="password_change"
        ):
            passwords.change_own(request, form)
            messages.success(
                request, "Your password is changed. Your other sessions are signed out."
            )
            return redirect("accounts:account")
        form.add_error(
            "code",
            "That code was not accepted; wait for the next one. Your password is not changed.",
        )
    if passwords.ends_session(request, form):
        logout(request)
        return redirect("login")
    uncounted = form.has_error("old_password", "uncounted")
    return _account_page(request, form, status=503 if uncounted else 400)


SIGN_IN_AGAIN = (
    "To set up an authenticator app, sign out and sign in again: it takes a sign-in "
    f"within the last {two_factor.FRESH_CODE_SECONDS // 60} minutes."
)


def _two_factor_page(
    request: HttpRequest, form: CodeForm | None = None, status: int = 200, refusal: str = ""
) -> HttpResponse:
    user = request.user
    device = two_factor.confirmed_device(user)
    may_enrol = two_factor.may_enrol(request)
    # A device set up in a verified session is offered only while the session may finish it.
    pending = two_factor.pending_device(request) if may_enrol else None
    context = {
        "device": device,
        "pending": pending,
        "may_enrol": may_enrol,
        "form": form or CodeForm(),
        "next": _next_url(request),
        "required": two_factor.must_use_second_factor(user),
        "refusal": refusal or ("" if may_enrol or device else SIGN_IN_AGAIN),
    }
    if pending is not None:
        context["qr_code"] = two_factor.qr_code_data_uri(pending)
        context["secret"] = two_factor.secret_for_typing(pending)
    # The page shows the new secret: never cached, never kept in the browser's history.
    return render(request, "accounts/two_factor.html", context, status=status)


def _enrolment_refused(request: HttpRequest) -> HttpResponse:
    """A password alone never replaces a second factor: the page asks for the current code;
    nor does an old session set up a first one: the page asks for a new sign-in."""
    if two_factor.confirmed_device(request.user) is None:
        refusal = SIGN_IN_AGAIN
    else:
        refusal = "To replace your authenticator app, first enter a code from the one you have."
    return _two_factor_page(request, status=403, refusal=refusal)


@require_GET
@login_required
@never_cache
def two_factor_page(request: HttpRequest) -> HttpResponse:
    """Verify with the enrolled device, or enrol one."""
    return _two_factor_page(request)


@require_POST
@login_required
@never_cache
def enrol(request: HttpRequest) -> HttpResponse:
    try:
        two_factor.start_enrolment(request=request)
    except two_factor.EnrolmentRefused:
        return _enrolment_refused(request)
    return redirect(f"{reverse('accounts:two_factor')}?{urlencode({'next': _next_url(request)})}")


@require_POST
@login_required
@never_cache
def confirm(request: HttpRequest) -> HttpResponse:
    form = CodeForm(request.POST)
    if form.is_valid():
        try:
            confirmed = two_factor.confirm_enrolment(
                request=request, token=form.cleaned_data["code"]
            )
        except two_factor.EnrolmentRefused:
            return _enrolment_refused(request)
        if confirmed:
            return HttpResponseRedirect(_next_url(request))
        form.add_error("code", "That code is not the one the app shows now. Try the next one.")
    return _two_factor_page(request, form, status=400)


@require_POST
@login_required
@never_cache
def verify(request: HttpRequest) -> HttpResponse:
    form = CodeForm(request.POST)
    if form.is_valid():
        if two_factor.verify(request=request, token=form.cleaned_data["code"]):
            return HttpResponseRedirect(_next_url(request))
        form.add_error(
            "code",
            "That code was not accepted. Wait for the next one; after several wrong codes "
            "each try must wait longer.",
        )
    return _two_factor_page(request, form, status=400)


class _CountedPasswordChangeView(PasswordChangeView):
    form_class = CountedPasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form: CountedPasswordChangeForm) -> HttpResponse:  # type: ignore[override]
        passwords.change_own(self.request, form)  # audited, as on the account page
        return HttpResponseRedirect(self.get_success_url())

    def form_invalid(self, form: CountedPasswordChangeForm) -> HttpResponse:  # type: ignore[override]
        if passwords.ends_session(self.request, form):
            logout(self.request)
            return redirect("login")
        response = super().form_invalid(form)
        if form.has_error("old_password", "uncounted"):
            response.status_code = 503
        return response


def admin_password_change(request: HttpRequest) -> HttpResponseBase:
    """The admin's "Change password" (as ``AdminSite.password_change``), with the old
    password counted as a sign-in (``CountedPasswordChangeForm``). It asks for no code: a
    person who has an authenticator app (or must) changes theirs on the account page."""
    if passwords.asks_code(request.user):
        return HttpResponseRedirect(f"{reverse('accounts:account')}#password")
    request.current_app = admin.site.name
    view = _CountedPasswordChangeView.as_view(
        success_url=reverse("admin:password_change_done"),
        extra_context=admin.site.each_context(request),
    )
    return view(request)
