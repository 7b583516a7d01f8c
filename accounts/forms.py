from __future__ import annotations

from django import forms


class CodeForm(forms.Form):
    """Six digits from the authenticator app (spaces allowed, as apps show them)."""

    code = forms.CharField(max_length=12, strip=True)

    def clean_code(self) -> str:
        code = self.cleaned_data["code"].replace(" ", "")
        if not (code.isascii() and code.isdigit()) or len(code) != 6:
            raise forms.ValidationError("Enter the six digits your authenticator app shows.")
        return code
