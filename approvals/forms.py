from __future__ import annotations

from typing import Any

from django import forms

from approvals.models import Verdict
from approvals.selectors import AGES, QueueFilters
from tools_registry.policy import Risk


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=Verdict.choices)
    comment = forms.CharField(required=False, max_length=2000)
    # The hash of what the reviewer was shown; the approval binds to it.
    arguments_hash = forms.CharField(max_length=64, min_length=64)
    # Destructive approvals: the tool's name, typed by the reviewer.
    confirmation = forms.CharField(required=False, max_length=64)


class QueueFilterForm(forms.Form):
    """The queue's filters, read from the query string. Unknown values are dropped, never an
    error: a stale bookmarked URL still opens the queue."""

    tool = forms.CharField(required=False, max_length=64)
    risk = forms.ChoiceField(
        required=False,
        choices=[("", "Any risk"), (Risk.WRITE, "Write"), (Risk.DESTRUCTIVE, "Destructive")],
    )
    agent = forms.CharField(required=False, max_length=64)
    session = forms.CharField(required=False, max_length=128)
    age = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Any age"),
            ("5m", "Waiting > 5 minutes"),
            ("1h", "Waiting > 1 hour"),
            ("1d", "Waiting > 1 day"),
        ],
    )
    expiring = forms.BooleanField(required=False)
    order = forms.ChoiceField(
        required=False, choices=[("oldest", "Oldest first"), ("newest", "Newest first")]
    )
    after = forms.CharField(required=False, max_length=80)
    before = forms.CharField(required=False, max_length=80)

    def filters(self) -> QueueFilters:
        data = self.cleaned_data if self.is_valid() else self._valid_parts()
        return QueueFilters(
            tool=(data.get("tool") or "").strip(),
            risk=data.get("risk") or "",
            agent=(data.get("agent") or "").strip(),
            session=(data.get("session") or "").strip(),
            age=str(data.get("age")) if data.get("age") in AGES else "",
            expiring=bool(data.get("expiring")),
            newest_first=data.get("order") == "newest",
        )

    def _valid_parts(self) -> dict[str, Any]:
        return {k: v for k, v in self.cleaned_data.items() if k not in self.errors}


class RevealForm(forms.Form):
    reason = forms.CharField(max_length=500)


class ReauthForm(forms.Form):
    password = forms.CharField(max_length=4096, strip=False, widget=forms.PasswordInput)
    # Asked (and then required) of people with a second factor: see the view.
    code = forms.CharField(max_length=12, required=False, strip=True)
