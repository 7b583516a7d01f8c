from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from tools_registry.permissions import has_any_review_grant


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Which sections the signed-in person may open; the templates only show those."""
    sso = {"sso_enabled": settings.OIDC_ENABLED, "sso_name": settings.OIDC_PROVIDER_NAME}
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": {}, **sso}
    return {
        **sso,
        "nav": {
            "approvals": has_any_review_grant(user),
            "audit": user.has_perm("audit.view_auditevent"),
            "admin": user.is_staff,
        },
    }
