from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from approvals import selectors
from tools_registry.permissions import has_any_review_grant


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Which sections the signed-in person may open; the templates only show those."""
    sso = {"sso_enabled": settings.OIDC_ENABLED, "sso_name": settings.OIDC_PROVIDER_NAME}
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": {}, **sso}
    reviews = has_any_review_grant(user)
    return {
        **sso,
        "nav": {
            "approvals": reviews,
            # Counted only where a template shows it (templates call a callable).
            "attention": (lambda: selectors.attention_count(user)) if reviews else 0,
            "audit": user.has_perm("audit.view_auditevent"),
            "admin": user.is_staff,
        },
    }
