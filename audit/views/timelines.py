"""A call's story and a session's story, told from the trail alone (masked as recorded)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode

from audit.catalogue import describe
from audit.masking import mask_text
from audit.models import AuditEvent
from audit.views.common import auditor_view

# A session is bounded by the agent's round limit; this only guards against a runaway.
SESSION_EVENT_LIMIT = 5000

STEP_TITLES = {
    "call.submitted": "Proposal",
    "call.refused": "Refused",
    "call.decision": "Vote",
    "call.approved": "Approved",
    "call.rejected": "Rejected",
    "call.cancelled": "Cancelled",
    "call.expired": "Expired",
    "call.execution_started": "Intent (before the handler ran)",
    "call.execution_finished": "Result",
    "call.stale_result_discarded": "Stale result discarded",
    "call.escalated": "Escalated to a person",
    "call.reconciled": "Reconciled",
}


@dataclass
class Step:
    event: AuditEvent
    title: str
    description: str
    data_json: str


def _step(event: AuditEvent) -> Step:
    return Step(
        event=event,
        title=STEP_TITLES.get(event.action, event.action),
        description=describe(event.action),
        data_json=json.dumps(event.data, indent=2, ensure_ascii=False, sort_keys=True),
    )


@auditor_view
def call_timeline(request: HttpRequest, call_id: UUID) -> HttpResponse:
    events = list(AuditEvent.objects.filter(call_id=call_id).order_by("id"))
    if not events:
        raise Http404("The trail has no event about this call.")
    proposal = next((e for e in events if e.action == "call.submitted"), None)
    return render(
        request,
        "audit/call.html",
        {
            "call_id": call_id,
            "steps": [_step(e) for e in events],
            "proposal": proposal,
            "arguments_json": json.dumps(
                (proposal.data if proposal else {}).get("arguments", {}),
                indent=2,
                ensure_ascii=False,
                sort_keys=True,
            ),
            "votes": [e for e in events if e.action == "call.decision"],
            "attempts": sum(1 for e in events if e.action == "call.execution_started"),
            "last": events[-1],
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
    session = request.GET.get("session", "").strip()
    if not agent or not session or "\x00" in agent + session:
        raise Http404("Name an agent and a session.")
    # Stored session ids went through the masking detectors; the lookup does the same.
    stored_session = mask_text(session)
    events = list(
        AuditEvent.objects.filter(agent_name=agent, session_id=stored_session).order_by("id")[
            :SESSION_EVENT_LIMIT
        ]
    )
    if not events:
        raise Http404("The trail has no event of this session.")
    calls: dict[Any, SessionCall] = {}
    for event in events:
        item = calls.setdefault(
            event.call_id, SessionCall(call_id=event.call_id, started=event.occurred_at)
        )
        item.steps.append(_step(event))
        item.tool = item.tool or event.tool_name
        item.outcome = event.outcome or item.outcome
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
            "truncated": len(events) == SESSION_EVENT_LIMIT,
            "first": events[0],
            "last": events[-1],
        },
    )
