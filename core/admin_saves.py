"""The admin's add and change pages when two saves race: for one unique name, or for one
row (a page saved after someone else changed what it showed: the one door for every admin
page that edits a row, a tool's grants among them)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.db import IntegrityError, models
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import salted_hmac

UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE


class UniqueNameRaceShown:
    """A save that loses a race for a unique name (Save clicked twice, two admins adding
    one agent) shows the form again with "already exists", where it was a 500. Both saves
    passed the form's unique check, made before either committed; the loser's INSERT waited
    for the winner's and failed. The admin runs the page in one transaction, rolled back
    whole, so nothing of the loser's save is kept and the page runs once more: its check
    now sees the winner's row."""

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
        except IntegrityError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
        return super().changeform_view(request, object_id, form_url, extra_context)  # type: ignore[misc]


class ChangedMeanwhileRefused(forms.Form):
    """A page that saves nothing when what it edits was changed since it was shown.

    The admin posts every field the page showed and saves them over the row as stored when
    the save arrives (guardian's grant page sets exactly what it posts): a page loaded
    before someone else's change wrote it back as its own (an account deactivated, active
    again; a grant taken away, given back; a refusal rule removed), unseen by whoever saved.
    The page carries a digest of what it showed (``shown_state``); the save locks the
    row it writes (``edited_row``), held until the save commits (the page's save is one
    transaction, the row locked as the save's own service locks it), then compares, and asks
    for a reload if they differ (``changed_meanwhile``: the subclass's own checks skip a page
    refused). A subclass says what the page shows (``stored_state``) and names it
    (``edits``). Put in front of a ``ModelForm``, whose instance is the row by default.
    """

    shown_state = forms.CharField(widget=forms.HiddenInput, required=False)
    edits = "This record"
    changed_meanwhile = False

    def stored_state(self) -> Any:
        """What the page shows of the row as stored now, as JSON."""
        raise NotImplementedError

    def edited_row(self) -> models.Model | None:
        """The row the save writes; None on an add page (nothing was shown to compare)."""
        instance: models.Model | None = getattr(self, "instance", None)
        return instance if instance is not None and instance.pk is not None else None

    def _digest(self) -> str:
        # Keyed: the state may hold a secret (a password left in an upstream's URL), and the
        # digest travels in the page, where a plain hash would answer guesses of it.
        state = json.dumps(self.stored_state(), sort_keys=True, default=str)
        return salted_hmac("countersign.admin.shown_state", state, algorithm="sha256").hexdigest()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.edited_row() is not None:
            self.initial["shown_state"] = self._digest()

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        row = self.edited_row()
        if row is None:
            return cleaned
        type(row)._default_manager.select_for_update().values_list("pk").get(pk=row.pk)
        if cleaned.get("shown_state") != self._digest():
            self.changed_meanwhile = True
            self.add_error(
                None,
                f"{self.edits} was changed since you opened this page (see the audit trail): "
                "nothing was saved, since saving would have written back what the page "
                "showed. Reload the page and make your change again.",
            )
        return cleaned
