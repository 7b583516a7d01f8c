from __future__ import annotations

import json
from typing import Any

from django import forms

from approvals.models import StandingApproval, Verdict
from approvals.selectors import AGES, ORDERS, QueueFilters
from approvals.services.standing import MAX_USES, Terms
from core.json_values import DuplicateKey, json_problem, reject_constant, unique_keys
from tools_registry.policy import Risk

STANDING_HOURS = [(1, "1 hour"), (8, "8 hours"), (24, "1 day"), (168, "7 days")]
MAX_EDIT_BYTES = 64 * 1024
# Which later calls a standing approval covers, in the order the form offers them.
STANDING_MATCHES = [
    (StandingApproval.Match.SAME, "Exactly these arguments"),
    (StandingApproval.Match.CONDITION, "Arguments matching a condition"),
    (StandingApproval.Match.ANY, "Any arguments"),
]
# The field a refused verdict is about, by the refusal's code: the page says it beside that
# field, marks the field, and the keyboard goes there (static/js/app.js) to fix it.
REFUSAL_FIELDS = {
    "comment_required": "comment",
    "confirmation_required": "confirmation",
    "correction_refused": "edited_arguments",
    "standing_terms_refused": "standing",
}


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=Verdict.choices)
    comment = forms.CharField(required=False, max_length=2000)
    # The hash of what the reviewer was shown; the approval binds to it.
    arguments_hash = forms.CharField(max_length=64, min_length=64)
    # The hash of the current state shown beside the call, when the tool shows one.
    state_hash = forms.CharField(required=False, max_length=64)
    # Risky approvals: the call's target or amount, typed by the reviewer.
    confirmation = forms.CharField(required=False, max_length=200)
    # Corrected arguments (JSON), approved as corrected.
    edited_arguments = forms.CharField(required=False, max_length=MAX_EDIT_BYTES)
    # Also allow later calls like this one (write tools only): which, for how long, how many.
    standing = forms.ChoiceField(
        required=False,
        choices=[("", "No"), *StandingApproval.Match.choices],
    )
    standing_hours = forms.TypedChoiceField(
        required=False, coerce=int, choices=STANDING_HOURS, empty_value=None
    )
    standing_uses = forms.IntegerField(required=False, min_value=1, max_value=MAX_USES)
    standing_condition = forms.CharField(required=False, max_length=2000)

    STANDING_FIELDS = ("standing", "standing_condition", "standing_hours", "standing_uses")

    def clean_edited_arguments(self) -> Any:
        raw = self.cleaned_data.get("edited_arguments") or ""
        # The box goes with every verdict, opened or not: a rejection corrects nothing, and a
        # correction left half-typed must not stand in its way (``verdict`` is cleaned first).
        if not raw.strip() or self.cleaned_data.get("verdict") == Verdict.REJECT:
            return None
        try:
            value = json.loads(raw, parse_constant=reject_constant, object_pairs_hook=unique_keys)
        except DuplicateKey as exc:
            # {"amount": 50, ..., "amount": 5000}: a pasted original with a correction put in
            # front of it would approve the original's value, the last one.
            raise forms.ValidationError(
                f"The corrected arguments name {json.dumps(exc.name[:100])} twice in one "
                "object; keep only the value you mean."
            ) from None
        except (ValueError, RecursionError) as exc:
            message = str(exc) if isinstance(exc, ValueError) else "it nests too deeply"
            raise forms.ValidationError(
                f"The corrected arguments are not valid JSON: {message}."
            ) from None
        if problem := json_problem(value):
            raise forms.ValidationError(f"The corrected arguments cannot be stored: {problem}.")
        return value

    def refusal_field(self, code: str) -> str:
        """The id of the field a refused verdict is about, or "" (the refusal is the call's,
        or about a field the page does not show, as the hashes)."""
        if code == "invalid_form":
            shown = ("comment", "confirmation", "edited_arguments", *self.STANDING_FIELDS)
            name = next((name for name in self.errors if name in shown), "")
        elif code == "standing_terms_refused" and self.cleaned_data.get("standing") == "condition":
            name = "standing_condition"
        else:
            name = REFUSAL_FIELDS.get(code, "")
        return f"id_{name}" if name else ""

    def standing_terms(self) -> Terms | None:
        match = self.cleaned_data.get("standing")
        if not match:
            return None
        hours = self.cleaned_data.get("standing_hours") or 1
        return Terms(
            seconds=hours * 3600,
            max_uses=self.cleaned_data.get("standing_uses"),
            match=match,
            condition=self.cleaned_data.get("standing_condition") or "",
        )


class NoteForm(forms.Form):
    text = forms.CharField(max_length=2000)


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
    order = forms.ChoiceField(required=False, choices=ORDERS)
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
            order=str(data.get("order") or "oldest"),
        )

    def _valid_parts(self) -> dict[str, Any]:
        return {k: v for k, v in self.cleaned_data.items() if k not in self.errors}


class RevealForm(forms.Form):
    reason = forms.CharField(max_length=500)


class ReauthForm(forms.Form):
    password = forms.CharField(max_length=4096, strip=False, widget=forms.PasswordInput)
    # Asked (and then required) of people with a second factor: see the view.
    code = forms.CharField(max_length=12, required=False, strip=True)
