"""A call's detail page and the decision form."""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from approvals import reauth, selectors
from approvals.forms import DecisionForm, RevealForm
from approvals.guards import conflict_of_interest
from approvals.models import ToolCall, Verdict
from approvals.services import decisions, reveals
from approvals.views.common import AuthedRequest, call_or_403, wants_partial
from audit.masking import mask_arguments
from tools_registry import registry, sources
from tools_registry.permissions import reviewable_tools
from tools_registry.policy import Risk

logger = logging.getLogger(__name__)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def preview_of(call: ToolCall, arguments: Any) -> str:
    """The handler's own description of the effect, from the arguments it is given."""
    try:
        spec = sources.implementation(call.tool)
    except registry.UnknownTool:
        return ""
    if spec.preview_fn is None:
        return ""
    try:
        return str(spec.preview_fn(arguments))
    except Exception:
        # Arguments come from an agent; a preview that chokes on them must not hide the call.
        logger.exception("preview of %s failed for call %s", call.tool.name, call.pk)
        return ""


def arguments_context(call: ToolCall, *, revealed: Any = None) -> dict[str, Any]:
    shown = (
        revealed
        if revealed is not None
        else mask_arguments(call.arguments, call.tool.sensitive_fields)
    )
    return {
        "arguments_json": pretty(shown),
        "preview": preview_of(call, shown),
        "revealed": revealed is not None,
        "has_masked": shown != call.arguments,
    }


def detail_context(request: AuthedRequest, call: ToolCall, **extra: Any) -> dict[str, Any]:
    user = request.user
    conflict = conflict_of_interest(call, user)
    votes = list(call.decisions.all())
    history = selectors.session_history(call)
    reviewable = set(reviewable_tools(user).values_list("pk", flat=True)) if history else set()
    sensitive = call.tool.sensitive_fields
    now = timezone.now()
    context: dict[str, Any] = {
        "call": call,
        "decisions": votes,
        "approvals": sum(1 for d in votes if d.verdict == Verdict.APPROVE),
        "already_voted": any(d.reviewer_id == user.pk for d in votes),
        "owns_agent": conflict == "owner",
        "acts_for_me": conflict == "on_behalf_of",
        "destructive": call.risk == Risk.DESTRUCTIVE,
        "recent_login": reauth.is_recent(request, now=now),
        "reauth_minutes": max(1, settings.APPROVALS_REAUTH_WINDOW_SECONDS // 60),
        "reauth_url": reverse("approvals:reauth")
        + "?next="
        + reverse("approvals:detail", kwargs={"pk": call.pk}),
        "may_reveal": reveals.can_reveal(user, call),
        "history": [(c, c.tool_id in reviewable) for c in history],
        "seconds_left": int((call.expires_at - now).total_seconds()) if call.expires_at else None,
        "result_json": pretty(mask_arguments(call.result, sensitive)) if call.result else "",
        "error_json": pretty(mask_arguments(call.error, sensitive)) if call.error else "",
        "form": DecisionForm(),
        "reveal_form": RevealForm(),
        **arguments_context(call),
    }
    context.update(extra)
    return context


@require_GET
@login_required
@never_cache
def detail(request: AuthedRequest, pk: UUID) -> HttpResponse:
    call = call_or_403(request, pk)
    return render(request, "approvals/detail.html", detail_context(request, call))


@require_POST
@login_required
@never_cache
def decide(request: AuthedRequest, pk: UUID) -> HttpResponse:
    call = call_or_403(request, pk)
    form = DecisionForm(request.POST)
    refusal, refusal_code = "", ""
    if form.is_valid():
        try:
            result = decisions.decide(
                call_id=call.pk,
                reviewer=request.user,
                verdict=form.cleaned_data["verdict"],
                comment=form.cleaned_data["comment"],
                shown_arguments_hash=form.cleaned_data["arguments_hash"],
                confirmation=form.cleaned_data["confirmation"],
                authenticated_at=reauth.authenticated_at(request),
            )
        except decisions.DecisionRefused as exc:
            refusal, refusal_code = exc.message, exc.code
        else:
            verdict = "approved" if result.decision.verdict == Verdict.APPROVE else "rejected"
            if not request.htmx:
                messages.success(request, f"You {verdict} the {call.tool.name} call.")
                return redirect("approvals:detail", pk=call.pk)
    else:
        refusal = "; ".join(f"{k}: {' '.join(str(e) for e in v)}" for k, v in form.errors.items())
        refusal_code = "invalid_form"
    # Always show the call as it is now: after a lost race the reviewer sees the outcome.
    call = call_or_403(request, pk)
    context = detail_context(request, call, form=form, refusal=refusal, refusal_code=refusal_code)
    if wants_partial(request):
        # 200 even for a refusal: htmx swaps only successful responses into the page.
        return render(request, "approvals/detail.html#decision-panel", context)
    return render(request, "approvals/detail.html", context, status=409 if refusal else 200)


@require_POST
@login_required
@never_cache
def reveal(request: AuthedRequest, pk: UUID) -> HttpResponse:
    """Show the unmasked arguments once, after a reason; the look is audited."""
    call = call_or_403(request, pk)
    form = RevealForm(request.POST)
    extra: dict[str, Any] = {}
    if form.is_valid():
        try:
            revealed = reveals.reveal_arguments(
                call_id=call.pk, reviewer=request.user, reason=form.cleaned_data["reason"]
            )
        except reveals.RevealRefused as exc:
            extra["reveal_error"] = exc.message
        else:
            extra.update(arguments_context(call, revealed=revealed.arguments))
    else:
        extra["reveal_error"] = "Say why you need to see the masked values."
    extra["reveal_form"] = form
    context = detail_context(request, call, **extra)
    if wants_partial(request):
        return render(request, "approvals/detail.html#arguments", context)
    return render(request, "approvals/detail.html", context)
