"""E-mails to reviewers about pending calls: new calls, reminders, escalation before expiry.

Driven by the beat sweep (``approvals.sweeps.run_all``). Each notification is claimed with a
conditional UPDATE of its timestamp column together with its audit event, and the e-mail is
sent after that commits: two sweeps running at once send each notification once. A failed
send is logged and audited (``call.notification_failed`` names who got nothing, as the claim's
event named them all), not retried (the reminder and the escalation are the second and third
chance); one that says the server is down ends the run: the notifications it had not taken
yet wait for the next run. People whom separation of duties keeps from approving a call are not mailed
about it.

* new: every pending call, to the tool's reviewers (user grants and group grants) who could
  approve it (``recipients.audience``);
* reminder: once, ``Tool.reminder_after_seconds`` after submission, to those of them who
  have not voted yet;
* escalation: once, shortly before expiry, to ``Tool.escalation_group``.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage, mailers
from django.db import transaction
from django.db.models import DurationField, ExpressionWrapper, F, Q, Value
from django.db.models.lookups import GreaterThanOrEqual
from django.urls import reverse
from django.utils import timezone

from approvals import events, guards
from approvals.models import Status, ToolCall
from approvals.recipients import (
    Audience,
    audience,
    escalation_recipients,
    granted_reviewers,
    without_conflicts,
)
from tools_registry.models import Tool

logger = logging.getLogger(__name__)

BATCH = 200


@dataclass
class Outbox:
    """The mail server as one run finds it. Every send waits out the server's timeout when
    it hangs: a run that went on after a failed send held its worker (a slot the executor
    shares) for the timeout once per call due, and lost every notification it took."""

    down: bool = False


@dataclass
class NotificationReport:
    notified: int = 0
    reminded: int = 0
    escalated: int = 0


def _names(people: list[Any]) -> list[str]:
    return [p.get_username() for p in people]


def _facts(about: Audience) -> dict[str, Any]:
    """What a notification's audit event says of who may approve the call."""
    return {"teams": about.teams, "no_approver": about.no_approver}


def _link(call: ToolCall) -> str:
    return settings.PUBLIC_URL + reverse("approvals:detail", kwargs={"pk": call.pk})


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "never"


@dataclass(frozen=True)
class Mail:
    """One notification e-mail and the account it is for (the name the audit event gives)."""

    recipient: str
    message: EmailMessage


def _message(call: ToolCall, *, subject: str, lead: str, to: Any, about: Audience) -> Mail:
    # Only names and times go into the mail: the arguments and the reasoning can hold
    # personal data and stay behind the sign-in (and its masking).
    if warning := about.warning(call.tool.name):
        lead = f"{lead}\n\n{warning}"
    approvers = f"Approvers: {guards.teams_phrase(about.teams)}\n" if about.teams else ""
    body = (
        f"{lead}\n\n"
        f"Tool:      {call.tool.name} ({call.get_risk_display().lower()})\n"
        f"Agent:     {call.agent.name}\n"
        f"Submitted: {_when(call.created_at)}\n"
        f"Expires:   {_when(call.expires_at)}\n"
        f"{approvers}\n"
        f"Review it: {_link(call)}\n"
    )
    message = EmailMessage(subject=f"[Countersign] {subject}", body=body, to=[to.email])
    return Mail(recipient=to.get_username(), message=message)


def _send(call: ToolCall, kind: str, mails: list[Mail], outbox: Outbox) -> None:
    """Send ``mails`` after their claim committed; the people they did not reach are named
    in a ``call.notification_failed`` event, as the claim's event named them all."""
    if not mails:
        return
    if outbox.down:
        # Sends deferred to the end of a caller's transaction: the server already failed.
        logger.warning("mail server down: %d reviewer notification(s) not sent", len(mails))
        _record_failure(call, kind, [m.recipient for m in mails], server_down=True)
        return
    # One connection for the call's messages, each sent on its own: in one batch, the first
    # recipient refused (a mailbox gone, an address Django will not write) ended it, and
    # every reviewer after that one in name order never heard of the call.
    connection = mailers.default
    refused: list[str] = []
    sent = 0
    try:
        connection.open()
        for mail in mails:
            try:
                connection.send_messages([mail.message])
            except Exception as failure:
                if _server_down(failure):
                    raise
                logger.exception("could not send a reviewer notification")
                refused.append(mail.recipient)
            sent += 1
    except Exception as failure:
        outbox.down = _server_down(failure)
        logger.exception("could not send %d reviewer notification(s)", len(mails) - sent)
        unsent = [m.recipient for m in mails[sent:]]
        _record_failure(call, kind, refused + unsent, server_down=outbox.down)
    else:
        if refused:
            _record_failure(call, kind, refused, server_down=False)
    finally:
        with suppress(Exception):  # a failed goodbye says nothing of what was sent
            connection.close()


def _record_failure(call: ToolCall, kind: str, recipients: list[str], *, server_down: bool) -> None:
    try:
        events.notification_failed(call, kind=kind, recipients=recipients, server_down=server_down)
    except Exception:  # the database gone too: the log above still says what was not sent
        logger.exception("could not record %d unsent reviewer notification(s)", len(recipients))


def _server_down(failure: Exception) -> bool:
    """Whether ``failure`` says the next send would wait or fail the same: the server
    unreachable, hung, or refusing us (smtplib's errors are OSErrors). Not so when it refused
    one message's recipient or content, nor for an address Django will not write (a
    ValueError): the other messages still go."""
    return isinstance(failure, OSError) and not isinstance(
        failure, smtplib.SMTPRecipientsRefused | smtplib.SMTPDataError
    )


def _claim(call_id: Any, column: str, now: datetime) -> ToolCall | None:
    """Take the right to send one notification; None if another sweep took it, the call
    is no longer pending, or another transaction holds it (a decision under way, maybe in a
    paused process: the sweep does not wait for it, the next one looks again). Must run
    inside the caller's transaction."""
    due = ToolCall.objects.select_for_update(skip_locked=True).filter(
        pk=call_id, status=Status.PENDING, **{f"{column}__isnull": True}
    )
    if not list(due.values_list("pk", flat=True)):
        return None
    ToolCall.objects.filter(pk=call_id).update(**{column: now})
    return ToolCall.objects.select_related("tool", "agent").get(pk=call_id)


def _notify(
    call_ids: Iterable[Any], column: str, kind: str, build: Any, now: datetime, outbox: Outbox
) -> int:
    sent = 0
    for call_id in call_ids:
        if outbox.down:
            break  # left unclaimed: the next run tells their reviewers
        with transaction.atomic():
            call = _claim(call_id, column, now)
            if call is None:
                continue
            mails = build(call)
            transaction.on_commit(partial(_send, call, kind, mails, outbox))
        sent += 1
    return sent


def notify_new_calls(
    *, now: datetime | None = None, limit: int = BATCH, outbox: Outbox | None = None
) -> int:
    """Tell each new pending call's reviewers that it waits for them."""
    now, outbox = now or timezone.now(), outbox or Outbox()
    due = ToolCall.objects.filter(
        status=Status.PENDING, reviewers_notified_at__isnull=True
    ).order_by("created_at")
    granted: dict[int, list[Any]] = {}

    def build(call: ToolCall) -> list[Mail]:
        if call.tool_id not in granted:
            granted[call.tool_id] = granted_reviewers(call.tool)
        about = audience(call, granted[call.tool_id])
        events.reviewers_notified(call, recipients=_names(about.people), **_facts(about))
        asks = f"Agent {call.agent.name} asks to run {call.tool.name}."
        if about.no_approver:
            subject = f"{call.tool.name} call needs an admin before it expires"
            lead = f"{asks} It waits for a decision."
        else:
            subject = f"{call.tool.name} call waits for your review"
            lead = f"{asks} It waits for your decision."
        return [_message(call, subject=subject, lead=lead, to=p, about=about) for p in about.people]

    return _notify(
        list(due.values_list("pk", flat=True)[:limit]),
        "reviewers_notified_at",
        "new_call",
        build,
        now,
        outbox,
    )


def send_reminders(
    *, now: datetime | None = None, limit: int = BATCH, outbox: Outbox | None = None
) -> int:
    """Remind the reviewers who have not voted when a call waited ``reminder_after_seconds``."""
    now, outbox = now or timezone.now(), outbox or Outbox()
    sent = 0
    for tool in Tool.objects.filter(reminder_after_seconds__isnull=False):
        cutoff = now - timedelta(seconds=tool.reminder_after_seconds or 0)
        due = list(
            ToolCall.objects.filter(
                tool=tool, status=Status.PENDING, reminded_at__isnull=True, created_at__lte=cutoff
            )
            .order_by("created_at")
            .values_list("pk", flat=True)[: limit - sent]
        )
        if not due:
            continue
        reviewers = granted_reviewers(tool)

        def build(call: ToolCall, reviewers: list[Any] = reviewers) -> list[Mail]:
            # On the arguments as they are: a correction asks everyone to vote again.
            voted = set(
                call.decisions.filter(arguments_hash=call.arguments_hash).values_list(
                    "reviewer_id", flat=True
                )
            )
            about = audience(call, reviewers)
            people = [p for p in about.people if p.pk not in voted]
            events.reminder_sent(call, recipients=_names(people), **_facts(about))
            waited = int((now - call.created_at).total_seconds() // 60)
            still = "needs an admin" if about.no_approver else "waits for your review"
            return [
                _message(
                    call,
                    subject=f"Reminder: {call.tool.name} call still {still}",
                    lead=f"This call has waited {waited} minutes for a decision.",
                    to=p,
                    about=about,
                )
                for p in people
            ]

        sent += _notify(due, "reminded_at", "reminder", build, now, outbox)
        if sent >= limit or outbox.down:
            break
    return sent


def escalation_due(now: datetime) -> Q:
    """The pending calls that escalate at ``now``: the setting's lead before expiry, at most
    half way through the call's own time to live (left no longer than it waited). The call's,
    not its tool's TTL as it is now: one changed since the call came moved the escalation of
    every call waiting, to its submission (raised) or to moments before its expiry (cut)."""
    lead = timedelta(seconds=settings.APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS)
    left = ExpressionWrapper(F("expires_at") - Value(now), output_field=DurationField())
    waited = ExpressionWrapper(Value(now) - F("created_at"), output_field=DurationField())
    return Q(expires_at__gt=now, expires_at__lte=now + lead) & Q(GreaterThanOrEqual(waited, left))


def escalate_expiring(
    *, now: datetime | None = None, limit: int = BATCH, outbox: Outbox | None = None
) -> int:
    """Tell the tool's escalation group about calls close to expiring undecided."""
    now, outbox = now or timezone.now(), outbox or Outbox()
    sent = 0
    for tool in Tool.objects.filter(escalation_group__isnull=False).select_related(
        "escalation_group"
    ):
        due = list(
            ToolCall.objects.filter(
                tool=tool,
                status=Status.PENDING,
                escalated_at__isnull=True,
            )
            .filter(escalation_due(now))
            .order_by("expires_at")
            .values_list("pk", flat=True)[: limit - sent]
        )
        if not due:
            continue
        people = escalation_recipients(tool)
        reviewers = granted_reviewers(tool)
        group = tool.escalation_group.name if tool.escalation_group else ""

        def build(
            call: ToolCall,
            team: list[Any] = people,
            reviewers: list[Any] = reviewers,
            group: str = group,
        ) -> list[Mail]:
            people = without_conflicts(call, team)
            # The escalation team hears of the call whatever teams it needs, to act on it;
            # the mail says who may approve it, and whether anyone can.
            about = audience(call, reviewers)
            events.escalation_sent(call, recipients=_names(people), group=group, **_facts(about))
            return [
                _message(
                    call,
                    subject=f"Escalated: {call.tool.name} call expires undecided soon",
                    lead=(
                        f"Nobody has decided this call yet and it expires at {_when(call.expires_at)}. "
                        f"You receive this as a member of {group}, the escalation team of {call.tool.name}."
                    ),
                    to=p,
                    about=about,
                )
                for p in people
            ]

        sent += _notify(due, "escalated_at", "escalation", build, now, outbox)
        if sent >= limit or outbox.down:
            break
    return sent


def run(*, now: datetime | None = None) -> NotificationReport:
    now = now or timezone.now()
    outbox = Outbox()  # one for the run: a server that failed is not tried again in it
    return NotificationReport(
        notified=notify_new_calls(now=now, outbox=outbox),
        reminded=send_reminders(now=now, outbox=outbox),
        escalated=escalate_expiring(now=now, outbox=outbox),
    )
