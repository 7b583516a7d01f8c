"""The "needs attention" page: calls whose outcome is unknown, and failed destructive calls.

A person who may review the tool marks the real outcome, asks the downstream again, or
re-runs the call with its original idempotency key after an explicit confirmation. Every
action is a POST through ``approvals.services.attention``, audited with the person.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from approvals import display, selectors, transitions
from approvals.guards import CONFLICTS, conflicts_on_calls
from approvals.models import Status, ToolCall
from approvals.services.attention import (
    AttentionRefused,
    RerunConfirmationRequired,
    needs_a_person,
    outside_required_teams_on,
    recheck_call,
    rerun_call,
    resolve_call,
)
from approvals.services.recovery import refuses_repeats
from approvals.views.common import AuthedRequest, call_or_403

PAGE = "approvals/attention.html"
PAGE_SIZE = 200


class ResolveForm(forms.Form):
    outcome = forms.ChoiceField(
        choices=[(Status.SUCCEEDED, "It happened"), (Status.FAILED, "It did not happen")]
    )
    note = forms.CharField(required=False, max_length=2000)
    # The call's fence when the page was shown: the decision is about those attempts.
    fence = forms.IntegerField(required=False, min_value=0)


class RerunForm(forms.Form):
    confirm = forms.BooleanField(required=False)
    note = forms.CharField(required=False, max_length=2000)
    fence = forms.IntegerField(required=False, min_value=0)


def _item(call: ToolCall, user: Any, **extra: Any) -> dict[str, Any]:
    return _items([call], user, **extra)[0]


def _items(calls: list[ToolCall], user: Any, **extra: Any) -> list[dict[str, Any]]:
    """The cards of ``calls``; who may not settle which is asked once for all of them (the
    page lists up to ``PAGE_SIZE``), not a query or more per card."""
    # The agent's owner, or the person it acts for, may see a call but not settle it; nor
    # may a reviewer outside the teams its policy asks its approvals from.
    conflicts = conflicts_on_calls(calls, user)
    outside = outside_required_teams_on(calls, user)
    return [
        _card(call, CONFLICTS.get(conflicts[call.pk], "") or outside[call.pk], **extra)
        for call in calls
    ]


def _card(call: ToolCall, conflict: str, **extra: Any) -> dict[str, Any]:
    view = display.page(call)
    return {
        "call": call,
        "view": view,
        "arguments_json": view.arguments_json,
        "attention_reason": display.text(call.attention_reason),
        "open": needs_a_person(call),
        "conflict": conflict,
        # Only writes are run again; a destructive call's outcome is recorded, nothing more.
        "rerunnable": transitions.allowed(call.status, Status.APPROVED, risk=call.risk),
        # The re-run's confirmation says whether a repeat can double the effect; asked only
        # for it (one card), not for every card of the page.
        "repeats_refused": extra.get("confirming") and refuses_repeats(call),
        **extra,
    }


@never_cache
@require_GET
@login_required
def attention(request: AuthedRequest) -> HttpResponse:
    items = _items(selectors.attention_page(request.user, PAGE_SIZE), request.user)
    template = f"{PAGE}#attention-list" if request.htmx else PAGE
    return render(request, template, {"items": items})


@never_cache
@require_GET
@login_required
def attention_item(request: AuthedRequest, pk: UUID) -> HttpResponse:
    """One call's card; ``?confirm=rerun`` shows the re-run confirmation (nothing changes),
    bound to ``fence``: the call's fence on the card the person asked it from."""
    call = call_or_403(request, pk)
    asked = RerunForm(request.GET)
    asked.is_valid()  # a fence that is no number is none: the call's own, as shown now
    shown = asked.cleaned_data.get("fence")
    item = _item(
        call,
        request.user,
        confirming=request.GET.get("confirm") == "rerun",
        shown_fence=call.fence if shown is None else shown,
    )
    return _respond(request, item)


@never_cache
@require_POST
@login_required
def resolve(request: AuthedRequest, pk: UUID) -> HttpResponse:
    call = call_or_403(request, pk)
    form = ResolveForm(request.POST)
    if not form.is_valid():
        return _refused(request, call, "Choose whether the effect happened.", status=400)
    try:
        call = resolve_call(
            call_id=call.pk,
            person=request.user,
            outcome=form.cleaned_data["outcome"],
            note=form.cleaned_data["note"],
            shown_fence=form.cleaned_data["fence"],
        )
    except AttentionRefused as exc:
        return _refused(request, call, exc.message)
    return _done(request, call, f"Marked {call.get_status_display().lower()}.")


@never_cache
@require_POST
@login_required
def rerun(request: AuthedRequest, pk: UUID) -> HttpResponse:
    call = call_or_403(request, pk)
    form = RerunForm(request.POST)
    form.is_valid()  # every field is optional; the service insists on the confirmation
    try:
        call = rerun_call(
            call_id=call.pk,
            person=request.user,
            confirmed=bool(form.cleaned_data.get("confirm")),
            note=form.cleaned_data.get("note", ""),
            shown_fence=form.cleaned_data.get("fence"),
        )
    except RerunConfirmationRequired as exc:
        return _refused(request, call, exc.message, confirming=True)
    except AttentionRefused as exc:
        return _refused(request, call, exc.message)
    return _done(request, call, f"Sent to run again with the key {call.execution_key}.")


@never_cache
@require_POST
@login_required
def recheck(request: AuthedRequest, pk: UUID) -> HttpResponse:
    call = call_or_403(request, pk)
    try:
        outcome = recheck_call(call_id=call.pk, person=request.user)
    except AttentionRefused as exc:
        return _refused(request, call, exc.message)
    call = call_or_403(request, pk)
    if outcome.action == "succeeded":
        return _done(request, call, "The downstream found the effect: the call succeeded.")
    answers = {
        "not_found": "The downstream has no record of the effect.",
        "cannot_tell": "The downstream still cannot tell.",
        "lookup_failed": "The downstream could not be asked; try again later.",
        "no_lookup": "This tool cannot be asked; check the downstream system yourself.",
    }
    notice = answers.get(outcome.finding, "Nothing changed.")
    return _respond(request, _item(call, request.user, notice=notice))


def _respond(request: AuthedRequest, item: dict[str, Any], *, status: int = 200) -> HttpResponse:
    if request.htmx:
        # 200 even for a refusal: htmx swaps only successful responses into the page.
        return render(request, f"{PAGE}#attention-item", {"item": item})
    return render(request, PAGE, {"items": [item], "single": True}, status=status)


def _refused(
    request: AuthedRequest,
    call: ToolCall,
    message: str,
    *,
    confirming: bool = False,
    status: int = 409,  # 400 for a form filled wrong
) -> HttpResponse:
    # Always show the call as it is now: after a lost race the person sees the outcome.
    call = call_or_403(request, call.pk)
    item = _item(call, request.user, refusal=message, confirming=confirming)
    return _respond(request, item, status=status)


def _done(request: AuthedRequest, call: ToolCall, notice: str) -> HttpResponse:
    if not request.htmx:
        messages.success(request, f"{call.tool.name} call {call.pk}: {notice}")
        return redirect("approvals:attention")
    # Read it again: a re-run may already have finished (the embedded mode runs it at once).
    call = call_or_403(request, call.pk)
    return _respond(request, _item(call, request.user, notice=notice))
