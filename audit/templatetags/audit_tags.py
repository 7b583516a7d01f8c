from __future__ import annotations

from django import template
from django.urls import reverse
from django.utils.http import urlencode

from audit.models import AuditEvent

register = template.Library()


@register.filter
def session_url(event: AuditEvent) -> str:
    """The session timeline of the session ``event`` belongs to."""
    query = urlencode({"agent": event.agent_name, "session": event.session_id})
    return f"{reverse('audit:session')}?{query}"
