"""The admin's add and change pages when two saves race for one unique name."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse

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
