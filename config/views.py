"""Site-wide views: the landing redirect and the health check."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from config.celery import app
from tools_registry.permissions import has_any_review_grant


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send each person to the part of the product their role uses."""
    if has_any_review_grant(request.user):
        return redirect("approvals:queue")
    if request.user.has_perm("audit.view_auditevent"):
        return redirect("audit:events")
    if request.user.is_staff:
        return redirect("admin:index")
    return redirect("approvals:queue")


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _check_cache() -> str:
    cache.set("healthz", "1", timeout=5)
    if cache.get("healthz") != "1":
        raise RuntimeError("cache did not return what was written")
    return "ok"


def _check_broker() -> str:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return "eager"
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return "ok"


@require_safe  # GET, and HEAD: the probe some load balancers send
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """State of each dependency; 503 as soon as one of them is down."""
    checks = {"database": _check_database, "cache": _check_cache, "broker": _check_broker}
    report: dict[str, str] = {}
    healthy = True
    for name, check in checks.items():
        try:
            report[name] = check()
        except Exception as exc:
            healthy = False
            report[name] = f"down: {type(exc).__name__}"
    report["status"] = "ok" if healthy else "down"
    report["mode"] = "embedded" if settings.EMBEDDED else "services"
    return JsonResponse(report, status=200 if healthy else 503)
