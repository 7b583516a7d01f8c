"""Secrets the admin's list pages must not be asked about."""

from __future__ import annotations

from typing import Any

from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest


class SecretsNotLookedUp:
    """Refuses list lookups on ``secret_fields`` (400). Django's admin lets any query
    string filter a list on any of the model's own fields, with any lookup, whatever the
    list shows: ``?webhook_secret__startswith=whsec_a`` answers "1 result" or "0 results",
    and one character at a time gives the whole secret to whoever may only view the list.
    (Django's user admin refuses ``password`` the same way.)"""

    secret_fields: tuple[str, ...] = ()

    def lookup_allowed(self, lookup: str, value: Any, request: HttpRequest) -> bool:
        if lookup.split(LOOKUP_SEP, 1)[0] in self.secret_fields:
            return False
        return super().lookup_allowed(lookup, value, request)  # type: ignore[misc]
