"""The risk signals a call raises at intake: those it raises on its own
(``tools_registry.risk_signals``) and those that need the agent's and the tool's history:
a recipient or record the agent has never acted on, an amount above the tool's usual range.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from approvals import hidden, sql
from approvals.models import Status, ToolCall
from tools_registry import facts as tool_facts
from tools_registry import sources
from tools_registry.facts import CallFacts, Money
from tools_registry.models import Agent, Tool
from tools_registry.policy import Risk
from tools_registry.risk_signals import Found, WorkingHours, from_call_itself, in_catalogue_order

# The usual range of a tool's amounts: the 95th percentile of its last successful calls in
# that currency, once there are enough of them to say what is usual.
USUAL_PERCENTILE = 0.95
USUAL_HISTORY = 200
USUAL_MINIMUM = 10


def raised(
    *,
    agent: Agent,
    tool: Tool,
    arguments: Any,
    reasoning: str,
    facts: CallFacts,
    at: datetime,
) -> list[Found]:
    """Every signal the call raises, in catalogue order."""
    found = from_call_itself(
        arguments=arguments,
        reasoning=reasoning,
        recipients=list(facts.recipients),
        internal_domains=settings.COUNTERSIGN_INTERNAL_DOMAINS,
        hours=working_hours(),
        at=at,
    )
    found += _first_contacts(agent, facts)
    if facts.money is not None and (unusual := _unusual_amount(tool, facts.money)):
        found.append(unusual)
    # Details are stored on the call and in the trail, and shown to every reviewer: a
    # recipient or a record quoted from a secret or sensitive field is masked there too.
    secrets = hidden.values(tool, arguments)
    return in_catalogue_order([Found(f.code, hidden.text(f.detail, secrets)) for f in found])


@cache
def _working_hours(hours: str, days: str, zone: str) -> WorkingHours | None:
    return WorkingHours.parse(hours, days, zone) if hours else None


def working_hours() -> WorkingHours | None:
    """From COUNTERSIGN_WORKING_HOURS ("08:00-19:00"; empty: no such signal), _DAYS, _ZONE."""
    return _working_hours(
        settings.COUNTERSIGN_WORKING_HOURS,
        settings.COUNTERSIGN_WORKING_DAYS,
        settings.COUNTERSIGN_WORKING_ZONE,
    )


def check_working_hours() -> None:
    """At start (``ApprovalsConfig.ready``): the hours are read when a call is screened, and
    a typo there ("8:00-19:00", a misspelt zone) failed every submission with a 500."""
    try:
        working_hours()
    except (ValueError, KeyError) as problem:  # a zone not found is a KeyError
        raise ImproperlyConfigured(
            f"COUNTERSIGN_WORKING_HOURS={settings.COUNTERSIGN_WORKING_HOURS!r}, "
            f"COUNTERSIGN_WORKING_DAYS={settings.COUNTERSIGN_WORKING_DAYS!r}, "
            f"COUNTERSIGN_WORKING_ZONE={settings.COUNTERSIGN_WORKING_ZONE!r}: {problem} "
            '(hours as "08:00-19:00", days as "mon-fri" or "mon,wed", an IANA zone)'
        ) from None


def _fingerprint(kind: str, value: str) -> str:
    """A keyed hash of a counterparty: compared, never stored or shown in clear."""
    key = (getattr(settings, "AUDIT_MASK_KEY", "") or settings.SECRET_KEY).encode()
    message = f"countersign-counterparty:{kind}:{value.strip().lower()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def _counterparties(facts: CallFacts) -> list[tuple[str, str, str]]:
    """(signal, detail, fingerprint) for each recipient and the target."""
    found = [("new_recipient", r, _fingerprint("recipient", r)) for r in facts.recipients]
    if facts.target:
        found.append(("new_target", facts.target, _fingerprint("target", facts.target)))
    return found


def _first_contacts(agent: Agent, facts: CallFacts) -> list[Found]:
    parties = _counterparties(facts)
    if not parties:
        return []
    known = sql.known_counterparties(agent.pk, [p[2] for p in parties])
    new: dict[str, list[str]] = {}
    for code, detail, fingerprint in parties:
        if fingerprint not in known:
            new.setdefault(code, []).append(detail)
    return [Found(code, ", ".join(details[:3])) for code, details in new.items()]


def remember_counterparties(call: ToolCall, previous: str | None) -> None:
    """After a write took effect, its recipients and target are no longer new to its agent
    (a status-changed hook: runs in the transaction that stored the success)."""
    if call.status != Status.SUCCEEDED or call.risk == Risk.READ:
        return
    facts = tool_facts.read(sources.facts_of(call.tool), call.arguments)
    parties = _counterparties(facts)
    if parties:
        # Two calls that succeed at once may both be the first: the second insert is a no-op.
        sql.remember_counterparties(call.agent_id, [p[2] for p in parties], timezone.now())


def _unusual_amount(tool: Tool, money: Money) -> Found | None:
    amounts = sorted(
        amount
        for amount in ToolCall.objects.filter(
            tool=tool,
            currency=money.currency,
            status=Status.SUCCEEDED,
            amount_minor__isnull=False,
        )
        .order_by("-created_at")
        .values_list("amount_minor", flat=True)[:USUAL_HISTORY]
        if amount is not None
    )
    if len(amounts) < USUAL_MINIMUM:
        return None
    usual = amounts[int(USUAL_PERCENTILE * (len(amounts) - 1))]
    if money.minor <= usual:
        return None
    ceiling = Money(minor=usual, currency=money.currency)
    return Found(
        "unusual_amount",
        f"{money}, where {int(USUAL_PERCENTILE * 100)}% of its last {len(amounts)} were at most {ceiling}",
    )
