"""Webhooks to agents, in the Standard Webhooks format: a call's events, POSTed to its
``callback_url``, signed.

Events: ``call.pending`` (a person's approval is requested), ``call.decided`` (reviewers
approved or rejected it), and each terminal state (``call.succeeded``, ``call.failed``,
``call.rejected``, ``call.expired``, ``call.cancelled``). The body is
``{"id", "type", "timestamp", "data": <the call as GET returns it>}``; ``timestamp`` is
when the delivery was written, by PostgreSQL's clock: a receiver orders a call's events by it.

Signature (https://www.standardwebhooks.com): ``webhook-id`` (the delivery's id, the same on
every attempt: a receiver drops duplicates by it), ``webhook-timestamp`` (unix seconds of
the attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
``f"{id}.{timestamp}.{body}"``, keyed with the base64-decoded part of the agent's
``whsec_...`` secret. After a rotation the header holds one signature per secret that
signs (the new one, and each old one still in its grace period: at most three),
space-separated; a receiver accepts the call if any one verifies.

Delivery: ``notify.status_changed`` writes a ``WebhookDelivery`` in the transition's
transaction and, after commit, sends a Celery task with its id. Each attempt is claimed by a
conditional UPDATE with a lease, POSTed outside any transaction, and recorded as a
``WebhookAttempt`` under the number its worker claimed (a worker stalled past its lease
and taken over records its own attempt, and finishes nothing else). When an attempt is due, its lease and when its task was sent are dated
and read by PostgreSQL's clock (``Now()``), never a process's own: the web processes, beat
and the workers may run on machines whose clocks disagree, and an attempt dated by one clock
and read by another was found not due by the worker sent to make it (then left for a
minute), or a lease lapsed when given was taken over mid-attempt (and sent twice). A failure
(no 2xx, a timeout, a refused connection) schedules the next attempt with exponential
backoff and jitter by moving ``next_attempt_at``; the beat-driven ``sweep`` sends the tasks
of due rows (and of rows whose task was lost, or is still queued: at growing intervals, each
task expiring when the next may be sent). There are no countdown/ETA tasks: Redis would
redeliver those after its visibility timeout. A delivery that has ended (delivered or given
up: ``ended_at``) is deleted with its attempts ``WEBHOOK_RETENTION_SECONDS`` later by
``gateway.retention.sweep``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpcore
import httpx
from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import DurationField, Expression, ExpressionWrapper, F, Q, TextField, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Concat, Now
from django.utils import timezone

from approvals.models import Status, ToolCall
from audit.log import record
from audit.masking import cut_short, mask_text
from core import bounded_http, tls
from core.json_values import storable
from gateway.models import WebhookAttempt, WebhookDelivery
from gateway.responses import represent_call
from tools_registry.services import signing_secrets

logger = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
LEASE_GRACE_SECONDS = 30
# The Celery name of ``gateway.tasks.deliver_webhook``: the wire format of queued messages.
DELIVER_TASK = "approvals.deliver_webhook"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's marker, not a secret


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (its base64 part, decoded)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of the message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def sign(secrets: Iterable[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, with one signature per secret."""
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(signature(s, message_id, timestamp, body) for s in secrets),
    }


def verify(secret: str, body: bytes, headers: dict[str, str], *, tolerance: int = 300) -> bool:
    """True when one of the signatures in ``headers`` is ``secret``'s and the timestamp is
    within ``tolerance`` seconds of now (older ones may be replays). What ``standardwebhooks``
    refuses is refused: an empty secret raises ValueError (an empty HMAC key is one anybody
    can sign with, so it verified forgeries), and headers without an id, with a timestamp
    too large for a float or a signature that is not ASCII are not verified (they raised)."""
    if not secret_key(secret):
        raise ValueError("an empty webhook secret: anybody can sign with an empty key")
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get(ID_HEADER, "")
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER, ""))
        stale = abs(time.time() - timestamp) > tolerance
    except (ValueError, OverflowError):
        return False
    if not message_id or stale:
        return False
    expected = signature(secret, message_id, timestamp, body)
    return any(
        given.isascii() and hmac.compare_digest(expected, given)
        for given in lowered.get(SIGNATURE_HEADER, "").split()
    )


def event_of(call: ToolCall, previous: str | None) -> str:
    """The webhook event a status change is ("" when it is none)."""
    if call.status == Status.PENDING and previous != Status.PENDING:
        # A call a rule or a standing approval approves as it arrives asks no person.
        return "" if call.approved_on_arrival else "call.pending"
    if call.is_terminal:
        return f"call.{call.status}"
    return ""


def decided(call: ToolCall, previous: str | None) -> bool:
    """Whether the change is the decision on a write: approved or rejected by its reviewers,
    or approved as it arrived by a policy rule or a standing approval."""
    return previous == Status.PENDING and call.status in (Status.APPROVED, Status.REJECTED)


def schedule(call: ToolCall, event: str) -> UUID:
    """Write the delivery of ``event`` with ``call``'s current state; inside its transaction."""
    delivery = WebhookDelivery(
        call=call, agent_id=call.agent_id, url=call.callback_url, next_attempt_at=Now()
    )
    delivery.event = event
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        # The task is sent on commit; the sweep re-sends it only if it was lost. (Without a
        # worker, in the embedded mode, the sweep loop makes the first attempt too.)
        delivery.dispatched_at = Now()
    # {"id", "type", "timestamp", "data"}, the timestamp filled in as the row is written.
    head = json.dumps({"id": str(delivery.pk), "type": event}, separators=(",", ":"))
    data = json.dumps(represent_call(call), separators=(",", ":"), ensure_ascii=False)
    delivery.body = Concat(
        Value(head.removesuffix("}") + ',"timestamp":'),
        _now_as_json(),
        Value(f',"data":{data}}}'),
        output_field=TextField(),
    )
    delivery.save(force_insert=True)
    return delivery.pk


def _now_as_json() -> Expression:
    """Now, as a JSON string (ISO 8601), by PostgreSQL's clock: the time a receiver puts a
    call's events in order by (each is retried on its own, so they arrive in any order).
    Dated by the clock of each process that made a change, a call approved in a web process
    a few seconds ahead of the worker that ran it was said to have succeeded before it was
    approved. ``clock_timestamp()``, not ``now()``: a transaction's start may come before
    the commit of the change it waited for on the call's row lock. (SQLite, the embedded
    mode, runs on one machine: its processes share one clock.)"""
    if connection.vendor == "postgresql":
        return RawSQL("to_json(clock_timestamp())::text", (), output_field=TextField())
    return Value(json.dumps(timezone.now().isoformat()))


def send(delivery_id: UUID, *, expires: float | None = None) -> None:
    """Hand one delivery to a worker, its task dropped unrun once ``expires`` seconds have
    passed (``WEBHOOK_RESEND_AFTER_SECONDS``, when the sweep may send another: ``sweep``).
    In the embedded (eager) mode the sweep loop delivers, so a slow receiver never holds up
    the request that changed the call."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return
    if expires is None:
        expires = settings.WEBHOOK_RESEND_AFTER_SECONDS
    try:
        # By name: the task (``gateway.tasks``) calls this module, not the other way.
        current_app.send_task(DELIVER_TASK, args=(str(delivery_id),), expires=expires)
    except Exception:
        logger.exception("could not send webhook %s; the sweep will", delivery_id)


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None = None
    error: str = ""
    excerpt: str = ""
    give_up: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(delivery_id: UUID) -> str:
    """Make the due attempt of one delivery; returns its new state, or "not_due"."""
    number = _claim(delivery_id)
    if number is None:
        return "not_due"
    delivery = WebhookDelivery.objects.select_related("agent").get(pk=delivery_id)
    # This worker's attempt is the one it claimed, whatever the row says by now: a worker
    # that stalled between its claim and this read, past its lease, read the number of the
    # attempt that took it over, and both recorded their attempts under it (the second
    # refused by the unique number, and lost), the stalled one finishing the other's claim.
    delivery.attempts = number
    started = timezone.now()
    clock = time.monotonic()
    try:
        result = _post(delivery)
    except Exception as exc:
        # Still an attempt, recorded and counted: one that crashed the task would leave the
        # delivery pending, resent after each lease to no end, never failed.
        logger.exception("webhook %s: the attempt broke", delivery.pk)
        result = AttemptResult(error=f"{type(exc).__name__}: {exc}"[:500])
    duration_ms = int((time.monotonic() - clock) * 1000)
    try:
        return _finish(delivery, result, started=started, duration_ms=duration_ms)
    except DatabaseError:
        # The receiver's words are what could not be stored, whatever they held: the
        # attempt is recorded without them rather than retried without end.
        logger.exception("webhook %s: the attempt's result could not be stored", delivery.pk)
        bare = AttemptResult(
            status_code=result.status_code,
            error="the attempt's result could not be stored" if result.error else "",
            give_up=result.give_up,
        )
        return _finish(delivery, bare, started=started, duration_ms=duration_ms)


def _claim(delivery_id: UUID) -> int | None:
    """Claim the due attempt of one delivery: its number, or None when none is due (another
    worker holds a lease that has not lapsed, or the next attempt is not due yet). The claim
    is conditional on the count of attempts read: of two workers that read it at once, the
    second's UPDATE waits for the first's, finds the count moved and claims nothing."""
    lease = timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + LEASE_GRACE_SECONDS)
    due = WebhookDelivery.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=Now()),
        pk=delivery_id,
        state=WebhookDelivery.State.PENDING,
        next_attempt_at__lte=Now(),
    )
    made = due.values_list("attempts", flat=True).first()
    if made is None:
        return None
    claimed = due.filter(attempts=made).update(lease_until=Now() + lease, attempts=made + 1)
    return made + 1 if claimed else None


def _post(delivery: WebhookDelivery) -> AttemptResult:
    # The timeout bounds the whole attempt, looking the name up, connecting and the headers
    # included: within the lease, so that no receiver holds the worker with the executor's
    # tasks waiting, and no other worker sends the delivery again beside it.
    deadline = time.monotonic() + settings.WEBHOOK_TIMEOUT_SECONDS
    refusal, permanent = _destination_refusal(delivery.url, deadline=deadline)
    if refusal:
        return AttemptResult(error=refusal, give_up=permanent)
    body = delivery.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Countersign-Webhooks/2",
        **sign(signing_secrets(delivery.agent), str(delivery.pk), int(time.time()), body),
    }
    options: dict[str, Any] = {
        "timeout": settings.WEBHOOK_TIMEOUT_SECONDS,
        # No redirects: a receiver must not bounce the signed payload somewhere else.
        "follow_redirects": False,
        "headers": {"Accept-Encoding": bounded_http.ACCEPT_ENCODING},
    }
    # Public receivers only: connected to an address checked as it is used, never through a
    # proxy (whose own address would be checked instead of the receiver's).
    try:
        client = (
            bounded_http.client_within(deadline, verify=tls.context(), **options)
            if settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS
            else httpx.Client(transport=PublicOnlyTransport(deadline=deadline), **options)
        )
    except bounded_http.ProxyUnusable as exc:
        return AttemptResult(error=str(exc))
    try:
        with (
            client as c,
            c.stream("POST", delivery.url, content=body, headers=headers) as response,
        ):
            excerpt = _excerpt(response, deadline=deadline)
    except httpx.HTTPError as exc:
        return AttemptResult(error=f"{type(exc).__name__}: {exc}"[:500])
    return AttemptResult(status_code=response.status_code, excerpt=excerpt)


# Of a receiver's answer only the start is kept (an excerpt for the admin); at most this much
# is read, however much it sends.
ANSWER_READ_BYTES = 64 * 1024


def _excerpt(response: httpx.Response, *, deadline: float) -> str:
    """The start of a receiver's answer (for the admin), read within the delivery's time, so
    that a receiver dripping bytes or sending a gigabyte cannot hold the worker past its
    lease with the executor's tasks waiting behind."""
    try:
        raw, _ = bounded_http.read(response, limit=ANSWER_READ_BYTES, deadline=deadline)
    except httpx.DecodingError as exc:
        # The status is the receiver's answer; its body is only shown to the admin.
        return f"(the answer could not be decoded: {exc})"[:500]
    except httpx.HTTPError as exc:
        # Nor does a body cut off (at the deadline, or by the receiver) undo its status: a
        # 2xx dripping its body was taken for a failure, sent again and again to a receiver
        # that had accepted it, then audited as given up.
        return f"(the answer was cut off: {type(exc).__name__}: {exc})"[:500]
    # Masked as the trail is: a receiver may echo the call it was sent (arguments, results)
    # or its own credentials, and the excerpt is shown on the admin's pages. Cut short first
    # where no value is cut through, then to the column's size (a marker may be longer).
    return mask_text(cut_short(bounded_http.text(raw, response.encoding), 500))[:500]


def _finish(
    delivery: WebhookDelivery, result: AttemptResult, *, started: datetime, duration_ms: int
) -> str:
    now = timezone.now()
    # What a receiver sent back may hold NUL, which PostgreSQL's text refuses.
    result = replace(result, error=storable(result.error), excerpt=storable(result.excerpt))
    if result.ok:
        changes = {"state": WebhookDelivery.State.DELIVERED, "delivered_at": now, "ended_at": now}
    elif result.give_up or delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        changes = {"state": WebhookDelivery.State.FAILED, "ended_at": now}
    else:
        changes = {"next_attempt_at": Now() + backoff(delivery.attempts), "dispatched_at": None}
    with transaction.atomic():
        # The delivery is locked until the attempt is recorded, so that the retention sweep
        # cannot delete it meanwhile. A worker that stalled past its lease may find it
        # gone: the worker that took over ended it, and a short WEBHOOK_RETENTION_SECONDS
        # had it deleted with its attempts. This late attempt has nothing left to be
        # recorded against (written anyway, it failed on its delivery's key, again and
        # again, and its task with it).
        locked = WebhookDelivery.objects.select_for_update().filter(pk=delivery.pk)
        if not list(locked.values_list("pk", flat=True)):
            logger.warning(
                "webhook %s: attempt %s ended after its delivery was deleted; not recorded",
                delivery.pk,
                delivery.attempts,
            )
            return str(changes.get("state", WebhookDelivery.State.PENDING))
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            started_at=started,
            duration_ms=duration_ms,
            status_code=result.status_code,
            error=result.error,
            response_excerpt=result.excerpt,
        )
        # Only the holder of this attempt's claim may finish it (a worker whose lease ran
        # out and was taken over writes nothing but its attempt row: no audit event either,
        # as the worker that took over may yet deliver it).
        holds_claim = WebhookDelivery.objects.filter(
            pk=delivery.pk, attempts=delivery.attempts
        ).update(
            lease_until=None,
            last_status_code=result.status_code,
            last_error=result.error,
            **changes,
        )
        if holds_claim and changes.get("state") == WebhookDelivery.State.FAILED:
            record(
                action="call.webhook_failed",
                outcome="failed",
                call=delivery.call,
                data={
                    "event": delivery.event,
                    "attempts": delivery.attempts,
                    "last_status_code": result.status_code,
                    "last_error": result.error,
                },
            )
    return str(changes.get("state", WebhookDelivery.State.PENDING))


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt: base x 2^(n-1), capped, minus up to half as jitter."""
    base = settings.WEBHOOK_RETRY_BASE_SECONDS
    # The doubling stops at 2^60, past any cap: a float base times 2^1024 and more (the
    # attempts of a deployment retrying for weeks) raised OverflowError, and the attempt
    # was neither recorded nor given up.
    delay = min(base * 2 ** min(max(attempts - 1, 0), 60), settings.WEBHOOK_RETRY_MAX_SECONDS)
    return timedelta(seconds=delay * random.uniform(0.5, 1.0))


def sweep(*, limit: int = 200) -> int:
    """Send the due deliveries (retries, and first attempts whose task was lost).

    Without a worker (the embedded mode) the attempts are made here, in ``run_sweeps``'s
    loop, between the expiries, the executor's recovery and the audit chain's sealing: once
    one attempt's time (``WEBHOOK_TIMEOUT_SECONDS``) is spent, the rest are left, unmarked,
    to the next sweep, so that receivers that never answer cannot hold all of those."""
    started = time.monotonic()
    resend_after = settings.WEBHOOK_RESEND_AFTER_SECONDS
    due = Q(state=WebhookDelivery.State.PENDING, next_attempt_at__lte=Now()) & (
        Q(lease_until__isnull=True) | Q(lease_until__lt=Now())
    )
    # A task sent and not run yet is lost, or still queued behind others: the sweep cannot
    # tell which. It is sent again WEBHOOK_RESEND_AFTER_SECONDS after it was sent, and after
    # that once the delivery has waited twice as long as when it was last sent (each copy
    # expiring when the next may go): re-sent every interval, a queue slower than that got
    # one more copy of each due delivery per interval, all of them run, and grew slower.
    waited_when_sent = ExpressionWrapper(
        F("dispatched_at") - F("next_attempt_at"), output_field=DurationField()
    )
    resend_due = Q(dispatched_at__lt=Now() - timedelta(seconds=resend_after)) & Q(
        dispatched_at__lt=Now() - waited_when_sent
    )
    not_in_queue = Q(dispatched_at__isnull=True) | resend_due
    due_since = dict(
        WebhookDelivery.objects.filter(due & not_in_queue)
        .order_by("next_attempt_at")
        .values_list("pk", "next_attempt_at")[:limit]
    )
    sent = 0
    for delivery_id, due_at in due_since.items():
        if (
            settings.CELERY_TASK_ALWAYS_EAGER
            and time.monotonic() - started >= settings.WEBHOOK_TIMEOUT_SECONDS
        ):
            break
        # Mark first, conditionally: two sweeps at once send each delivery once.
        marked = WebhookDelivery.objects.filter(due & not_in_queue, pk=delivery_id).update(
            dispatched_at=Now()
        )
        if not marked:
            continue
        sent += 1
        if settings.CELERY_TASK_ALWAYS_EAGER:
            deliver(delivery_id)
        else:
            # Live until the next copy may be sent (this process's clock: seconds off at
            # most, against a minute or more).
            waited = (timezone.now() - due_at).total_seconds()
            send(delivery_id, expires=max(resend_after, waited))
    return sent


def _destination_refusal(url: str, *, deadline: float) -> tuple[str, bool]:
    """Why a callback URL may not be called now ("" if it may) and whether that is final.

    Private, loopback and link-local addresses are refused unless
    ``WEBHOOK_ALLOW_PRIVATE_NETWORKS`` (the embedded mode allows them). This early look
    tells a permanent refusal from a passing DNS failure; the connection itself goes
    through ``PublicOnlyTransport``, which checks the address it actually connects to.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback_url must be an http(s) URL with a host", True
    if settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        return "", False
    try:
        infos = bounded_http.resolve(
            parts.hostname, parts.port or 443, timeout=deadline - time.monotonic()
        )
    except OSError as exc:
        return f"cannot resolve {parts.hostname}: {exc}"[:500], False
    for info in infos:
        if not is_public(str(info[4][0])):
            return f"{parts.hostname} resolves to a non-public address ({info[4][0]})", True
    return "", False


# NAT64's well-known prefix: 64:ff9b::a00:1 reaches 10.0.0.1 through a network's NAT64
# gateway, yet Python counts the whole prefix as global.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The deprecated "IPv4-compatible" addresses (::a.b.c.d), which some stacks still route.
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# "IPv4-translated" addresses (::ffff:0:a.b.c.d, SIIT): a translator reaches the IPv4 address.
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


def is_public(text: str) -> bool:
    """Whether an address is on the public internet; one that carries an IPv4 address
    (NAT64, IPv4-mapped, IPv4-compatible, IPv4-translated, 6to4) is as public as the address
    it carries. Site-local ones (fec0::/10, deprecated yet still routed inside some
    networks) are private, though Python counts them as global."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        if address in NAT64 or address in IPV4_COMPATIBLE or address in IPV4_TRANSLATED:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF).is_global
        # IPv4-mapped (::ffff:a.b.c.d) and 6to4 (2002:aabb:ccdd::) carry one too.
        if (carried := address.ipv4_mapped or address.sixtofour) is not None:
            return carried.is_global
    return address.is_global


def _public_addresses(host: str, port: int, *, timeout: float | None) -> list[str]:
    """The host's addresses, each checked public, for the connection to use: the address
    checked is the address connected to, so a DNS answer that changes between a check and
    the connection (rebinding) cannot reach a private network."""
    addresses = bounded_http.addresses_of(
        host, port, timeout=settings.WEBHOOK_TIMEOUT_SECONDS if timeout is None else timeout
    )
    private = [a for a in addresses if not is_public(a)]
    if private or not addresses:
        raise httpcore.ConnectError(f"{host} resolves to a non-public address ({private[:1]})")
    return addresses


class PublicOnlyTransport(httpx.HTTPTransport):
    """httpx's transport, connecting to public addresses only (``_public_addresses``, each
    in turn), within ``deadline``."""

    def __init__(self, *, deadline: float) -> None:
        super().__init__(verify=tls.context())
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls.context(),
            network_backend=bounded_http.DeadlineBackend(
                bounded_http.AddressedBackend(httpcore.SyncBackend(), _public_addresses), deadline
            ),
        )
