"""Template filters of the reviewer pages."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def waited(since: datetime | None, now: datetime | None = None) -> str:
    """How long since ``since``, in a word a reviewer reads at a glance: "12 s", "3 min",
    "2 h", "4 d" (never "0 minutes" for a call that arrived seconds ago)."""
    if since is None:
        return ""
    seconds = max(0, int(((now or timezone.now()) - since).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


@register.filter
def duration(seconds: int | float | None) -> str:
    """A time to live in the largest unit that divides it: "90 s", "15 min", "1 h", "7 d"."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@register.filter
def pretty_json(value: Any) -> str:
    """A value already masked for display, indented."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
