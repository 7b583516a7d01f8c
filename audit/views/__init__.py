"""The auditor workspace: read only, one module per page. Every view needs
``audit.view_auditevent``; none of them changes anything (GET only), except asking for a
walk of the chain (POST), which only appends to the trail."""

from __future__ import annotations

from audit.views.analytics import analytics
from audit.views.events import events
from audit.views.exports import export, verifier_script
from audit.views.timelines import call_timeline, session_timeline
from audit.views.verification import verification_status, verify_now

__all__ = [
    "analytics",
    "call_timeline",
    "events",
    "export",
    "session_timeline",
    "verification_status",
    "verifier_script",
    "verify_now",
]
