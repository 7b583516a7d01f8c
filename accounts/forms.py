from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminPasswordChangeForm
from django.contrib.auth import authenticate

# Django's other form of that name: a superuser's setting of anyone's password.
from django.contrib.auth.forms import AdminPasswordChangeForm as PasswordSetForm
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm
from django.http import HttpRequest

from accounts import attempts


class CodeForm(forms.Form):
    """Six digits from the authenticator app (spaces allowed, as apps show them)."""

    code = forms.CharField(max_length=12, strip=True)

    def clean_code(self) -> str:
        code = self.cleaned_data["code"].replace(" ", "")
        if not (code.isascii() and code.isdigit()) or len(code) != 6:
            raise forms.ValidationError("Enter the six digits your authenticator app shows.")
        return code


class SignInForm(AuthenticationForm):
    """Django's sign-in form, refusing a name longer than any account's as a wrong one. Django
    only sets the field's length for the browser: axes stored the attempt's name in a
    column too short for it, and the sign-in page answered 500."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        if len(username) > (getattr(self.fields["username"], "max_length", None) or len(username)):
            raise self.get_invalid_login_error()
        return super().clean()


class OldPasswordCountedAsSignIn:
    """The old password of a change of one's own password, checked as a sign-in is: through
    django-axes, counted, and refused while the account or address is locked. Django checks
    it on the side (``check_password``), so a stolen session could guess the password
    without end, and then change it. Each is counted first with the session's other
    attempts (``accounts.attempts``): ``attempt`` is its number, and the view signs the
    session out as a re-authentication does (``accounts.passwords.ends_session``)."""

    user: Any
    cleaned_data: dict[str, Any]
    attempt = 0  # none counted: no old password was sent

    def __init__(self, user: Any, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        self.request = request
        super().__init__(user, *args, **kwargs)  # type: ignore[call-arg]

    def clean_old_password(self) -> str:
        old_password = str(self.cleaned_data["old_password"])
        try:
            self.attempt = attempts.count(self.request)
        except attempts.AttemptsUncounted:
            raise forms.ValidationError(attempts.UNCOUNTED, code="uncounted") from None
        if self.attempt > attempts.MAX_FAILURES:
            # Sent beside the attempt that reached the limit: refused unchecked.
            raise forms.ValidationError(
                PasswordChangeForm.error_messages["password_incorrect"], code="over_limit"
            )
        person = authenticate(
            self.request, username=self.user.get_username(), password=old_password
        )
        if person is None or person.pk != self.user.pk:
            raise forms.ValidationError(
                PasswordChangeForm.error_messages["password_incorrect"], code="password_incorrect"
            )
        return old_password


class PasswordOnlySaved:
    """A form setting a password writes that column alone. Django's saves the account's
    whole row as read when the request began (the person signed in, or the admin page's),
    the password hashed in between: a change committed meanwhile (the account deactivated)
    was written back."""

    def set_password_and_save(self, user: Any, *args: Any, commit: bool = True, **kw: Any) -> Any:
        user = super().set_password_and_save(user, *args, commit=False, **kw)  # type: ignore[misc]
        if commit:
            user.save(update_fields=["password"])
        return user


class PasswordSetByAdminForm(PasswordOnlySaved, PasswordSetForm):
    """A superuser's setting of someone's password (the person's "Set password" page)."""


class CountedPasswordChangeForm(
    OldPasswordCountedAsSignIn, PasswordOnlySaved, AdminPasswordChangeForm
):
    """The admin's change of one's own password (its "Change password" page)."""


class OwnPasswordForm(OldPasswordCountedAsSignIn, PasswordOnlySaved, PasswordChangeForm):
    """The account page's change of one's own password: Django's form (the password
    validators of ``AUTH_PASSWORD_VALIDATORS``), and a code from the authenticator app,
    which the view checks last (``accounts.views.change_password``)."""

    code = forms.CharField(max_length=12, required=False, strip=True)
