"""The auditor workspace: read only, one module per page. Every view needs
``audit.view_auditevent``; none of them changes anything (GET only)."""

from __future__ import annotations

from audit.views.analytics import analytics
from audit.views.events import events
from audit.views.exports import export, verifier_script
from audit.views.timelines import call_timeline, session_timeline

__all__ = ["analytics", "call_timeline", "events", "export", "session_timeline", "verifier_script"]
