from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm


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
