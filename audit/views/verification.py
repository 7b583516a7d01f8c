""" "Verify the chain now": the one thing an auditor may ask of the workspace. It changes
nothing in the trail but appends the request and the outcome."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from audit import analytics as stats
from audit import tasks, verification_runs
from audit.models import VerificationRun
from audit.views.common import VIEW_PERMISSION, auditor_view
from core.polls import not_activity


def _panel(request: HttpRequest, run: VerificationRun | None) -> HttpResponse:
    return render(
        request,
        "audit/analytics.html#chain-panel",
        {"status": stats.chain_status(), "run": run},
    )


@require_POST
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@never_cache
def verify_now(request: HttpRequest) -> HttpResponse:
    run, _ = verification_runs.request_verification(
        user=request.user, send=tasks.send_verification_run
    )
    if getattr(request, "htmx", False):
        return _panel(request, run)
    return redirect("audit:analytics")


@auditor_view
def verification_status(request: HttpRequest, run_id: int) -> HttpResponse:
    """The chain panel again, polled by the page while the run is under way."""
    not_activity(request)
    run = get_object_or_404(VerificationRun, pk=run_id)
    # A page still polling a run whose worker died, or that ended without walking (another
    # walk answered for it): stop polling, show the last walk, give the button back.
    if verification_runs.is_dead(run) or verification_runs.was_not_run(run):
        return _panel(request, verification_runs.latest_run())
    return _panel(request, run)
