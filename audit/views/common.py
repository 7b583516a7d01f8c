from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

VIEW_PERMISSION = "audit.view_auditevent"


def auditor_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """GET only, signed in, and the auditor's permission (403 otherwise, e.g. for reviewers).
    Never cached: the pages show arguments, reasoning and the people behind calls."""
    return never_cache(
        require_GET(
            login_required(permission_required(VIEW_PERMISSION, raise_exception=True)(view))
        )
    )
