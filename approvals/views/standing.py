"""The standing approvals page: those a reviewer granted (an admin sees everyone's), and
their revocation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import F
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from approvals import display
from approvals.models import StandingApproval
from approvals.services import standing
from approvals.views.common import AuthedRequest
from tools_registry.permissions import revealable_tool_ids


@require_GET
@login_required
@never_cache
def standing_approvals(request: AuthedRequest) -> HttpResponse:
    """The standing approvals the reviewer granted (an admin sees everyone's), live first."""
    rows = StandingApproval.objects.select_related("tool", "agent", "granted_by").order_by(
        # Never revoked first (PostgreSQL sorts nulls last going up), the live among them
        # before the expired: only 200 rows are listed, and ended ones pile up.
        F("revoked_at").desc(nulls_first=True),
        "-expires_at",
    )
    if not request.user.has_perm("approvals.change_standingapproval"):
        rows = rows.filter(granted_by_id=request.user.pk)
    now = timezone.now()
    # The tools whose conditions they read in full: asked once, not for every row.
    revealable = revealable_tool_ids(request.user)
    listed = [_standing_row(s, now, request.user, revealable) for s in rows[:200]]
    return render(request, "approvals/standing.html", {"rows": listed})


def _standing_row(
    standing: StandingApproval, now: datetime, person: Any, revealable: set[int]
) -> dict[str, Any]:
    # Given for an earlier definition of the tool, it covers nothing any more.
    tool_changed = standing.tool_version != standing.tool.version
    return {
        "standing": standing,
        "live": standing.revoked_at is None and standing.expires_at > now and not tool_changed,
        "tool_changed": tool_changed,
        "condition": display.condition(standing, person, revealable=revealable),
    }


@require_POST
@login_required
@never_cache
def revoke_standing(request: AuthedRequest, pk: int) -> HttpResponse:
    try:
        revoked = standing.revoke(standing_id=pk, person=request.user)
    except StandingApproval.DoesNotExist:
        raise Http404("No such standing approval.") from None
    except standing.StandingRefused as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request, f"Revoked: {revoked.tool.name} for {revoked.agent.name} needs reviewers again."
        )
    return redirect("approvals:standing")
