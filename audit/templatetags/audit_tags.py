from __future__ import annotations

from django import template
from django.urls import reverse
from django.utils.http import urlencode

from audit.display import escape_hidden
from audit.models import AuditEvent

register = template.Library()


@register.filter
def visible(value: object) -> str:
    """``value`` as text with its hidden and direction-changing characters written out
    (``<U+202E>``), as reviewers are shown them: what agents, end users, reviewers and
    downstreams wrote must read on the auditor's pages as a machine reads it. Put it first
    in a chain of filters: it takes a value as stored, and its result is escaped as any."""
    return escape_hidden(str(value))


@register.filter
def session_url(event: AuditEvent) -> str:
    """The session timeline of the session ``event`` belongs to."""
    query = urlencode({"agent": event.agent_name, "session": event.session_id})
    return f"{reverse('audit:session')}?{query}"


# What the details column shows of an event's data, in this order: people's words first.
DETAIL_KEYS = (
    ("comment", "comment"),
    ("reason", "reason"),
    ("note", "note"),
    ("typed_confirmation", "typed"),
    ("error", "error"),
    ("user", "user"),
    ("group", "team"),
    ("users", "people"),
    ("groups", "teams"),
    ("permission", "permission"),
    ("permissions", "permissions"),
    ("checked", "events checked"),
    ("latency_ms", "latency ms"),
    ("filters", "filters"),  # what an export (audit.exported) asked for
)
# Argument names that carry an amount of money.
AMOUNT_KEYS = ("amount", "amount_cents", "total", "refund_amount")


@register.filter
def event_details(event: AuditEvent) -> list[tuple[str, str]]:
    """The few facts of an event an auditor scans a list for: a reviewer's comment, an
    amount, a reason, who got which grant (already masked, as recorded)."""
    data = event.data if isinstance(event.data, dict) else {}
    details: list[tuple[str, str]] = []
    for key, label in DETAIL_KEYS:
        value = data.get(key)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value)
        else:
            text = str(value)
        details.append((label, text[:160]))
    arguments = data.get("arguments")
    if isinstance(arguments, dict):
        for key in AMOUNT_KEYS:
            if arguments.get(key) not in (None, ""):
                currency = arguments.get("currency")
                details.append(
                    ("amount", f"{arguments[key]}{' ' + str(currency) if currency else ''}")
                )
                break
    return details
