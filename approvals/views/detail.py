"""A call's page: what it does, to whom, how risky, under which rule; the decision form,
corrections and the standing approval offered with an approval; and the live updates that
keep the page true."""

from __future__ import annotations

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
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from approvals import before_after, display, reauth, selectors
from approvals.forms import STANDING_MATCHES, DecisionForm, NoteForm, RevealForm
from approvals.guards import (
    CONFLICTS,
    conflict_of_interest,
    in_required_team,
    is_shown,
    required_teams,
    shown_digest,
    teams_phrase,
)
from approvals.models import Status, ToolCall, Verdict
from approvals.services import decisions, notes, reveals
from approvals.views.common import AuthedRequest, call_or_403, wants_partial
from core.polls import not_activity
from tools_registry.permissions import reviewable_tools
from tools_registry.policy import Risk


def live_version(call: ToolCall, state_hash: str) -> str:
    """Changes whenever anything the page shows of the call's progress changes, and
    whenever the record the call would change does (``state_hash``, as ``_shown_state``
    read it): that lives in the downstream system, and changes with nothing of the call's."""
    return ".".join(
        str(part)
        for part in (
            call.status,
            # Keyed, as the form's: the page carries nothing to test guesses of a masked value.
            shown_digest(call.arguments_hash)[:12],
            shown_digest(state_hash)[:12],
            len(call.decisions.all()),
            len(call.notes.all()),
            int(call.updated_at.timestamp() * 1000),
        )
    )


def _shown_state(call: ToolCall) -> tuple[Any, str]:
    """The state beside the call: read now while it waits; afterwards, what its last
    reviewer was shown (stored with the verdict)."""
    if call.status == Status.PENDING:
        shown = before_after.current_state(call)
        return (display.value(shown.state) if shown.state is not None else None), shown.hash
    for decision in reversed(call.decisions.all()):
        if decision.shown_state is not None:
            return display.value(decision.shown_state), decision.shown_state_hash
    return None, ""


def _policy(call: ToolCall) -> dict[str, Any]:
    """The policy the call is bound to, from its snapshot (calls stored before snapshots
    existed fall back to what the call itself recorded)."""
    bound = dict(call.policy or {})
    ttl = None
    if call.expires_at:
        ttl = int((call.expires_at - call.created_at).total_seconds())
    rule = bound.get("rule") or {}
    teams = required_teams(bound)
    return {
        "read": call.risk == Risk.READ,
        "version": bound.get("version"),
        "approvals_required": call.approvals_required,
        "teams": teams,
        # Who may approve, in words: every approver is a member of each team.
        "teams_phrase": teams_phrase(teams) if teams else "",
        "ttl_seconds": ttl,
        "timeout_seconds": bound.get("timeout_seconds", call.tool.timeout_seconds),
        "max_attempts": bound.get("max_attempts", call.tool.max_attempts),
        "rule": rule,
        "rule_errors": rule.get("errors", []),
    }


def detail_context(
    request: AuthedRequest,
    call: ToolCall,
    *,
    view: display.CallView | None = None,
    shown_state: tuple[Any, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    user = request.user
    view = view or display.page(call)
    conflict = conflict_of_interest(call, user)
    decided = list(call.decisions.all())
    # While the call waits, a verdict of the reviewer's on these arguments is an approval (a
    # rejection ends the call); they may still reject it.
    already_voted = any(
        d.reviewer_id == user.pk and d.arguments_hash == call.arguments_hash for d in decided
    )
    history = selectors.session_history(call)
    reviewable = set(reviewable_tools(user).values_list("pk", flat=True)) if history else set()
    now = timezone.now()
    pending = call.status == Status.PENDING
    policy = _policy(call)
    # Read once per request: the live poll has read it already (``_shown_state``).
    state, state_hash = shown_state or _shown_state(call)
    destructive = call.risk == Risk.DESTRUCTIVE
    outside_team = not in_required_team(call, user)
    edits_allowed = pending and (
        call.risk == Risk.WRITE
        or (destructive and settings.APPROVALS_DESTRUCTIVE_EDITS == "narrow")
    )
    context: dict[str, Any] = {
        "call": call,
        "view": view,
        "pending": pending,
        "approvals": view.approvals,
        "already_voted": already_voted,
        "owns_agent": conflict == "owner",
        "acts_for_me": conflict == "on_behalf_of",
        "conflict": CONFLICTS.get(conflict, ""),
        "outside_team": outside_team,
        # Separation of duties and a rule's team: who may reject but not approve.
        "may_approve": not conflict and not outside_team and not already_voted,
        "destructive": destructive,
        "confirm_phrase": (
            decisions.confirmation_phrase(call)
            if destructive or (call.policy or {}).get("confirm")
            else ""
        ),
        "recent_login": reauth.is_recent(request, now=now),
        "reauth_minutes": max(1, settings.APPROVALS_REAUTH_WINDOW_SECONDS // 60),
        "reauth_url": reverse("approvals:reauth")
        + "?next="
        + reverse("approvals:detail", kwargs={"pk": call.pk}),
        "may_reveal": pending and reveals.can_reveal(user, call),
        "history": [(c, c.tool_id in reviewable) for c in history],
        "seconds_left": int((call.expires_at - now).total_seconds()) if call.expires_at else None,
        "policy": policy,
        "state": state,
        # What the form binds the verdict to, keyed (``guards.shown_digest``), never the bare
        # hashes: guesses of a masked value could be tried against them.
        "state_hash": shown_digest(state_hash),
        "arguments_digest": shown_digest(call.arguments_hash),
        "edits_allowed": edits_allowed,
        "edit_json": display.pretty(view.arguments),
        "standing_allowed": pending and call.risk == Risk.WRITE,
        "standing_matches": STANDING_MATCHES,
        "standing_hours": DecisionForm.base_fields["standing_hours"].choices,  # type: ignore[attr-defined]
        "live_version": live_version(call, state_hash),
        "live_seconds": settings.APPROVALS_DETAIL_POLL_SECONDS,
        "form": DecisionForm(),
        "reveal_form": RevealForm(),
        "note_form": NoteForm(),
    }
    context.update(extra)
    # A refusal is said beside its field only if the page shows that field (the call may
    # have been decided meanwhile, the confirmation may wait for a sign-in): else at the top.
    standing_shown = pending and context["may_approve"] and context["standing_allowed"]
    shown_fields = {
        "id_comment": pending,
        "id_edited_arguments": pending and context["may_approve"] and edits_allowed,
        "id_confirmation": pending
        and context["may_approve"]
        and bool(context["confirm_phrase"])
        and (not destructive or context["recent_login"]),
        "id_standing": standing_shown,
        "id_standing_condition": standing_shown,
        "id_standing_hours": standing_shown,
        "id_standing_uses": standing_shown,
    }
    field = context.get("refusal_field", "")
    context["refusal_field"] = field if context.get("refusal") and shown_fields.get(field) else ""
    # Terms chosen, or a refusal about them, keep the standing approval's box open.
    context["standing_open"] = bool(context.get("refusal")) and (
        bool(context["form"]["standing"].value()) or field.startswith("id_standing")
    )
    return context


@require_GET
@login_required
@never_cache
def detail(request: AuthedRequest, pk: UUID) -> HttpResponse:
    call = call_or_403(request, pk)
    return render(request, "approvals/detail.html", detail_context(request, call))


@require_http_methods(["GET", "POST"])
@login_required
@never_cache
def live(request: AuthedRequest, pk: UUID) -> HttpResponse:
    """What changed on the call since the page's version: nothing (204, htmx swaps
    nothing), or the parts of the page to replace, out of band. A comment the reviewer was
    typing comes along and is kept in the form that replaces theirs: in the body of a POST
    (the page polls so), never in the URL, which access logs and proxies keep."""
    not_activity(request)
    call = call_or_403(request, pk)
    # The page sends its version and the arguments' digest it shows with the poll (its
    # #live-state); a page from before they moved there, in the URL.
    shown = request.POST if "v" in request.POST else request.GET
    # The record beside a waiting call is read again at every poll: changed in its own
    # system, nothing stored with the call changed, and only the version's state part tells.
    state = _shown_state(call)
    if shown.get("v") == live_version(call, state[1]):
        return HttpResponse(status=204)
    typed = request.POST.get("comment", "")[:2000]
    # The decision panel is replaced whole only when the page showed the call waiting (the
    # status is the version's first part) and it no longer is: the verdict form gives way to
    # the note form. Otherwise only its parts that change are: the panel holds the note form,
    # and replaced, it took what the reviewer was typing there, and a note on its way lost
    # the form it came from.
    shown_waiting = shown.get("v", "").partition(".")[0] == Status.PENDING
    context = detail_context(
        request,
        call,
        shown_state=state,
        kept_comment=typed,
        note_form=NoteForm(initial={"text": typed}),
        stale_arguments="h" in shown and not is_shown(shown["h"], call.arguments_hash),
        # The page keeps showing the arguments it was sent with: the next poll says so too.
        shown_hash=shown.get("h", "")[:64],
        decided_since_shown=shown_waiting and call.status != Status.PENDING,
    )
    if "s" in shown and context["pending"] and shown["s"] != context["state_hash"]:
        # Likewise the state of the record the call would change (``decide``).
        context.update(state_hash=shown["s"][:64], stale_state=True)
    return render(request, "approvals/detail.html#live-update", context)


@require_POST
@login_required
@never_cache
def decide(request: AuthedRequest, pk: UUID) -> HttpResponse:
    call = call_or_403(request, pk)
    form = DecisionForm(request.POST)
    refusal, refusal_code = "", ""
    typed = request.POST.get("comment", "")[:2000]
    if form.is_valid():
        edited = form.cleaned_data["edited_arguments"]
        if form.cleaned_data["verdict"] != Verdict.APPROVE:
            # A rejection runs nothing and corrects nothing. The correction box is sent with
            # every verdict, opened or not, and may still hold the arguments as they were
            # before another reviewer's correction: it must not stand in the way.
            edited = None
        elif not is_shown(form.cleaned_data["arguments_hash"], call.arguments_hash):
            # Made on arguments the call no longer has: the approval is refused as such
            # ("review it again"), not as a correction of what changed since.
            edited = None
        left: list[str] = []
        if edited is not None:
            edited, left = display.restore_masked(edited, call)
        try:
            if left:
                raise decisions.CorrectionRefused(
                    f"A value you changed still holds a masked part ({', '.join(left[:3])}): "
                    "what it stands for cannot be known. Retype the whole value, or leave "
                    "it as shown.",
                    call=call,
                )
            result = decisions.decide(
                call_id=call.pk,
                reviewer=request.user,
                verdict=form.cleaned_data["verdict"],
                comment=form.cleaned_data["comment"],
                shown_arguments_hash=form.cleaned_data["arguments_hash"],
                # As sent, empty or missing too: the page of a tool that shows a state
                # always carries its digest, so an empty one is refused as a stale one
                # (``None`` would bind the approval to no state at all). A tool that shows
                # none reads an empty hash now, and there is nothing to compare.
                shown_state_hash=form.cleaned_data["state_hash"],
                confirmation=form.cleaned_data["confirmation"],
                authenticated_at=reauth.authenticated_at(request),
                edited_arguments=edited,
                standing_terms=form.standing_terms(),
            )
        except decisions.DecisionRefused as exc:
            refusal, refusal_code = exc.message, exc.code
        else:
            verdict = "approved" if result.decision.verdict == Verdict.APPROVE else "rejected"
            if not request.htmx:
                messages.success(request, f"You {verdict} the {call.tool.name} call.")
                return redirect("approvals:detail", pk=call.pk)
            # What they typed went with the verdict: nothing is left to keep as a note, and
            # the form an approver is shown again (to reject still) starts empty, not with
            # the approval's comment as the reason a rejection would give the agent.
            form, typed = DecisionForm(), ""
    else:
        refusal = "; ".join(" ".join(str(e) for e in v) for v in form.errors.values())
        refusal_code = "invalid_form"
    # Always show the call as it is now: after a lost race the reviewer sees the outcome,
    # and what they typed is kept (in the form, or, once the call is decided, as a note).
    call = call_or_403(request, pk)
    # A correction they typed is kept for them to fix, unless the call's arguments changed
    # since their page showed them: the box then shows the arguments as they are now. Kept,
    # the old ones would go back as a correction with the next approval (now bound to the
    # new ones), undoing another reviewer's correction unseen.
    # The hash the page was sent with, also when another field was filled wrong: refused as
    # a form error, the panel was bound to arguments corrected meanwhile, unseen.
    shown = form.cleaned_data.get("arguments_hash", "") if form.is_bound else ""
    shown_now = is_shown(request.POST.get("arguments_hash", ""), call.arguments_hash)
    extra: dict[str, Any] = {}
    if (
        refusal
        and wants_partial(request)
        and shown
        and not shown_now
        and call.status == Status.PENDING
    ):
        # Only the panel is swapped: the page still shows the arguments it was sent with.
        # The form stays bound to those (an approval is refused until the page is reloaded)
        # and the page says they changed.
        extra = {"shown_hash": shown, "stale_arguments": True}
    context = detail_context(
        request,
        call,
        form=form,
        refusal=refusal,
        refusal_code=refusal_code,
        refusal_field=form.refusal_field(refusal_code) if refusal else "",
        kept_comment=typed if call.status != Status.PENDING else "",
        note_form=NoteForm(initial={"text": typed}),
        kept_edit=request.POST.get("edited_arguments", "") if shown_now else "",
        **extra,
    )
    shown_state = request.POST.get("state_hash", "")
    if wants_partial(request) and context["pending"] and shown_state != context["state_hash"]:
        # Only the panel is swapped: the page still shows what the call would change as it
        # was sent. Bound to the state read now, the form would approve, at the next click,
        # a record the reviewer has not seen; it stays bound to the one shown.
        context.update(state_hash=shown_state, stale_state=True)
    if wants_partial(request):
        # 200 even for a refusal: htmx swaps only successful responses into the page.
        return render(request, "approvals/detail.html#decision-response", context)
    status = 400 if refusal_code == "invalid_form" else 409 if refusal else 200
    return render(request, "approvals/detail.html", context, status=status)


@require_POST
@login_required
@never_cache
def add_note(request: AuthedRequest, pk: UUID) -> HttpResponse:
    """A comment that is not a verdict: kept from a stale page, or added afterwards."""
    call = call_or_403(request, pk)
    form = NoteForm(request.POST)
    extra: dict[str, Any] = {"note_form": form}
    status = 200
    if form.is_valid():
        try:
            notes.add_note(call_id=call.pk, author=request.user, text=form.cleaned_data["text"])
        except notes.NoteRefused as exc:
            extra["note_error"], status = exc.message, 409
        else:
            extra["note_form"] = NoteForm()
            extra["note_added"] = True
    else:
        extra["note_error"], status = "Write the note first (at most 2000 characters).", 400
    call = call_or_403(request, pk)
    context = detail_context(request, call, **extra)
    if wants_partial(request):
        # 200 even for a refusal: htmx swaps only successful responses into the page.
        return render(request, "approvals/detail.html#decision-response", context)
    return render(request, "approvals/detail.html", context, status=status)


@require_POST
@login_required
@never_cache
def reveal(request: AuthedRequest, pk: UUID) -> HttpResponse:
    """Show the unmasked arguments once, after a reason; the look is audited."""
    call = call_or_403(request, pk)
    form = RevealForm(request.POST)
    extra: dict[str, Any] = {}
    status = 200
    if call.status != Status.PENDING:
        extra["reveal_error"], status = "The call is no longer waiting for a decision.", 409
    elif form.is_valid():
        try:
            revealed = reveals.reveal_arguments(
                call_id=call.pk, reviewer=request.user, reason=form.cleaned_data["reason"]
            )
        except reveals.RevealRefused as exc:
            extra["reveal_error"], status = exc.message, 409
        else:
            extra["view"] = display.page(call, revealed=revealed.arguments)
    else:
        extra["reveal_error"], status = "Say why you need to see the masked values.", 400
    extra["reveal_form"] = form
    context = detail_context(request, call, **extra)
    if wants_partial(request):
        # 200 even for a refusal: htmx swaps only successful responses into the page.
        return render(request, "approvals/detail.html#arguments", context)
    return render(request, "approvals/detail.html", context, status=status)
