"""A call's story and a session's story, told from the trail alone (masked as recorded)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode

from audit.catalogue import describe
from audit.filters import SESSION_FILTER_LENGTH
from audit.masking import mask_text
from audit.models import AuditEvent
from audit.views.common import auditor_view

# A session is bounded by the agent's round limit; this only guards against a runaway.
SESSION_EVENT_LIMIT = 5000

STEP_TITLES = {
    "call.submitted": "Proposal",
    "call.arguments_revealed": "Arguments revealed to a reviewer",
    "call.execution_refused": "Not run (refused at the claim)",
    "call.lease_expired": "Worker went silent",
    "call.resolved": "Resolved by a person",
    "call.rerun": "Run again",
    "call.retry_requested": "Retry requested",
    "call.retry_refused": "Retry refused",
    "call.abandoned": "Abandoned",
    "call.execution_resent": "Sent to the executor again",
    "call.reviewers_notified": "Reviewers notified",
    "call.reminder_sent": "Reminder sent",
    "call.escalation_sent": "Escalation sent",
    "call.notification_failed": "E-mail not delivered",
    "call.webhook_failed": "Webhook to the agent failed",
    "reviewer.reauthenticated": "Re-authenticated",
    "reviewer.reauthentication_failed": "Re-authentication failed",
    "auth.two_factor_verified": "Second factor verified",
    "call.refused": "Refused",
    "call.decision": "Vote",
    "call.approved": "Approved",
    "call.rejected": "Rejected",
    "call.cancelled": "Cancelled",
    "call.expired": "Expired",
    "call.execution_started": "Intent (before the handler ran)",
    "call.execution_finished": "Result",
    "call.stale_result_discarded": "Stale result discarded",
    "call.late_result_accepted": "Late result accepted",
    "call.escalated": "Escalated to a person",
    "call.reconciled": "Reconciled",
    "call.rechecked": "Asked the downstream again",
}


# Events about a call that say something happened to it without changing its status; the
# call's status is the outcome of its last other event.
NOT_STATUS = frozenset(
    {
        "call.decision",
        "call.arguments_revealed",
        "call.reviewers_notified",
        "call.reminder_sent",
        "call.escalation_sent",
        "call.notification_failed",
        "call.webhook_failed",
        "call.stale_result_discarded",
        "call.rechecked",
        "call.note_added",
        "call.arguments_edited",
        "call.retry_refused",
    }
)
# What each step shows in full, outside the collapsed data: the words people wrote and the
# facts an auditor looks for first.
VISIBLE = {
    "call.decision": [
        ("comment", "Comment"),
        ("edited", "With a correction"),
        ("typed_confirmation", "Typed confirmation"),
        ("authenticated_at", "Signed in at"),
        ("policy_version", "Policy version"),
        ("shown_state_hash", "Shown state hash"),
    ],
    "call.approved": [
        ("by", "Approved by"),
        ("rule", "Rule"),
        ("policy_version", "Policy version"),
        ("standing_approval", "Standing approval"),
        ("granted_by", "Granted by"),
    ],
    "call.arguments_edited": [("approvals_reset", "Approvals reset")],
    "call.note_added": [("note", "Note")],
    "standing_approval.granted": [
        ("match", "Covers"),
        ("condition", "Condition"),
        ("max_uses", "At most"),
        ("expires_at", "Until"),
    ],
    "call.rejected": [("comment", "Comment")],
    "call.arguments_revealed": [("reason", "Reason"), ("fields", "Fields")],
    "call.resolved": [("note", "Note"), ("previous_status", "Was")],
    "call.execution_refused": [("reason", "Reason")],
    "call.retry_refused": [("message", "Reason")],
    "call.escalated": [("reason", "Reason")],
    "call.execution_finished": [("error", "Error"), ("latency_ms", "Latency (ms)")],
    "call.late_result_accepted": [("error", "Error"), ("latency_ms", "Latency (ms)")],
    "reviewer.reauthentication_failed": [("failures", "Failures in a row")],
    "auth.two_factor_verified": [("for", "For")],
}
# Sign-in steps of the call's reviewers (they are about a session, not a call, so they
# carry no call id): the re-authentication an approval relied on, found by the time its
# vote records (``authenticated_at``), and the failed attempts just before it.
REVIEWER_STEPS = ("reviewer.reauthenticated", "reviewer.reauthentication_failed")
# Between stamping the session and writing the event: milliseconds; a slow request, seconds.
SIGN_IN_SLACK = timedelta(seconds=5)


@dataclass
class Step:
    event: AuditEvent
    title: str
    description: str
    data_json: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    # A verdict's view of the world the call would change (approvals.before_after), as
    # the reviewer was shown it; a correction's arguments before and after.
    state: dict[str, Any] | None = None
    change: tuple[str, str] | None = None


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _step(event: AuditEvent) -> Step:
    title = STEP_TITLES.get(event.action, event.action)
    if event.action == "call.decision":
        title = {"approve": "Vote: approve", "reject": "Vote: reject"}.get(event.outcome, title)
    state = event.data.get("shown_state") if event.action == "call.decision" else None
    change = None
    if event.action == "call.arguments_edited":
        change = (_json(event.data.get("before")), _json(event.data.get("after")))
    return Step(
        event=event,
        title=title,
        description=describe(event.action),
        data_json=_json(event.data),
        facts=[
            (label, _shown(event.data[key]))
            for key, label in VISIBLE.get(event.action, [])
            if event.data.get(key) not in (None, "", [], False)
        ],
        state=state if isinstance(state, dict) else None,
        change=change,
    )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _policy_steps(proposal: AuditEvent | None) -> list[Step]:
    """The policy's verdict on the proposal (the rule that applied, if the proposal names
    one), as its own step right after the proposal."""
    if proposal is None:
        return []
    policy = proposal.data.get("policy")
    facts = []
    if isinstance(policy, dict):
        rule = policy.get("rule") or {}
        facts = [
            (str(k).replace("_", " ").capitalize(), _shown(v))
            for k, v in sorted(policy.items())
            # ``team``, beside ``teams``, is one of them for the release before to read.
            if k != "rule"
            and not (k == "team" and "teams" in policy)
            and v not in (None, "", [], False)
        ]
        if rule.get("number"):
            outcome = rule.get("then", "")
            if outcome == "require":
                outcome += f" {rule.get('approvals')}" + (
                    f" from {rule['team']}" if rule.get("team") else ""
                )
            facts.append(("Rule", f"{rule['number']}: {rule.get('when', '')} → {outcome}"))
        for error in rule.get("errors") or []:
            facts.append(("Not evaluated", error))
    signals = proposal.data.get("signals") or []
    if signals:
        facts.append(
            (
                "Signals",
                "\n".join(f"{s.get('code', '')}: {s.get('detail', '')}" for s in signals),
            )
        )
    for key, label in (("risk", "Risk"), ("approvals_required", "Approvals required")):
        if proposal.data.get(key) not in (None, ""):
            facts.append((label, _shown(proposal.data[key])))
    if not facts:
        return []
    return [
        Step(
            event=proposal,
            title="Policy",
            description="What the tool's policy asked of this call when it was proposed.",
            data_json=json.dumps(policy or {}, indent=2, ensure_ascii=False, sort_keys=True),
            facts=facts,
        )
    ]


def status_of(events: list[AuditEvent]) -> str:
    """The call's status as the trail tells it: the outcome of its last status event."""
    for event in reversed(events):
        if event.action not in NOT_STATUS and event.action.startswith("call.") and event.outcome:
            return event.outcome
    return ""


def _sign_in_relied_on(vote: AuditEvent) -> list[AuditEvent]:
    """The voter's re-authentication their vote relied on and the failed attempts just
    before it; never one they made for another call (a reviewer approving several calls
    re-authenticates at most once a window, each time from one call's page)."""
    raw = vote.data.get("authenticated_at")
    try:
        at = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        at = None
    if at is None or not vote.actor_id:
        return []
    # By label (indexed) and id (the same person, whatever they were called then).
    theirs = AuditEvent.objects.filter(
        actor_label=vote.actor_label, actor_type=vote.actor_type, actor_id=vote.actor_id
    )
    near = theirs.filter(
        action="reviewer.reauthenticated",
        occurred_at__gte=at - SIGN_IN_SLACK,
        occurred_at__lte=at + SIGN_IN_SLACK,
    )
    success = min(near, key=lambda e: abs(e.occurred_at - at), default=None)
    if success is None:
        return []  # a sign-in, not a re-authentication
    # The failures since their previous success, within the window a sign-in counts for.
    since = success.occurred_at - timedelta(seconds=settings.APPROVALS_REAUTH_WINDOW_SECONDS)
    before = theirs.filter(
        id__lt=success.pk, occurred_at__gte=since, occurred_at__lte=success.occurred_at
    )
    previous = before.filter(action="reviewer.reauthenticated").order_by("-id").first()
    failures = before.filter(
        action="reviewer.reauthentication_failed", id__gt=previous.pk if previous else 0
    ).order_by("id")
    return [*failures, success]


@auditor_view
def call_timeline(request: HttpRequest, call_id: UUID) -> HttpResponse:
    events = list(AuditEvent.objects.filter(call_id=call_id).order_by("id"))
    if not events:
        raise Http404("The trail has no event about this call.")
    proposal = next((e for e in events if e.action == "call.submitted"), None)
    sign_ins = [
        step
        for vote in events
        if vote.action == "call.decision"
        for step in _sign_in_relied_on(vote)
    ]
    ordered = sorted(
        {e.pk: e for e in [*events, *sign_ins]}.values(), key=lambda e: (e.occurred_at, e.pk)
    )
    steps: list[Step] = []
    for event in ordered:
        steps.append(_step(event))
        if event is proposal:
            steps.extend(_policy_steps(proposal))
    return render(
        request,
        "audit/call.html",
        {
            "call_id": call_id,
            "steps": steps,
            "status": status_of(events),
            "proposal": proposal,
            "arguments_json": json.dumps(
                (proposal.data if proposal else {}).get("arguments", {}),
                indent=2,
                ensure_ascii=False,
                sort_keys=True,
            ),
            "votes": [e for e in events if e.action == "call.decision"],
            "attempts": sum(1 for e in events if e.action == "call.execution_started"),
            "first": events[0],
        },
    )


@dataclass
class SessionCall:
    call_id: UUID | None
    tool: str = ""
    reasoning: str = ""
    token_cost: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""
    started: Any = None
    steps: list[Step] = field(default_factory=list)


@auditor_view
def session_timeline(request: HttpRequest) -> HttpResponse:
    agent = request.GET.get("agent", "").strip()
    # As the agent sent it: spaces around a session id are part of it, and an id of spaces
    # alone is one too (the API takes any non-empty id): the call page links here with it.
    session = request.GET.get("session", "")[:SESSION_FILTER_LENGTH]
    if not agent or not session or "\x00" in agent + session:
        raise Http404("Name an agent and a session.")
    # Stored session ids went through the masking detectors; the lookup does the same.
    stored_session = mask_text(session)
    # One more than is shown: a session of exactly the limit is whole, not cut short.
    events = list(
        AuditEvent.objects.filter(agent_name=agent, session_id=stored_session).order_by("id")[
            : SESSION_EVENT_LIMIT + 1
        ]
    )
    truncated = len(events) > SESSION_EVENT_LIMIT
    events = events[:SESSION_EVENT_LIMIT]
    if not events:
        raise Http404("The trail has no event of this session.")
    calls: dict[Any, SessionCall] = {}
    for event in events:
        # A refused call has no call id: each refusal is an attempt of its own.
        group = event.call_id or ("refused", event.pk)
        item = calls.setdefault(
            group, SessionCall(call_id=event.call_id, started=event.occurred_at)
        )
        item.steps.append(_step(event))
        item.tool = item.tool or event.tool_name or str(event.data.get("tool") or "")
        # The call's status, not the last event's outcome ("sent" of a notification).
        if event.action not in NOT_STATUS and event.outcome:
            item.outcome = event.outcome
        if event.action == "call.submitted":
            item.reasoning = str(event.data.get("reasoning") or "")
            item.token_cost = event.data.get("token_cost") or {}
    totals = {"input_tokens": 0, "output_tokens": 0, "usd": 0.0}
    for item in calls.values():
        for key in totals:
            value = item.token_cost.get(key)
            if isinstance(value, int | float):
                totals[key] += value
    return render(
        request,
        "audit/session.html",
        {
            "agent": agent,
            "session": stored_session,
            "export_query": urlencode({"agent": agent, "session": stored_session}),
            "calls": list(calls.values()),
            "totals": totals,
            "truncated": truncated,
            "first": events[0],
            "last": events[-1],
        },
    )
