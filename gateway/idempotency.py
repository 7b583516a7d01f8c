"""Idempotency-Key handling for agent requests, as Stripe and the IETF draft describe it.

Keys are scoped to the agent. The first request with a key inserts its record first thing
in the transaction that does its work (``INSERT ... ON CONFLICT DO NOTHING``). PostgreSQL
makes a concurrent duplicate's insert wait until that transaction ends, so:

* a duplicate of a write waits the few milliseconds until the first request committed,
  then replays its stored response (same status, same call id);
* a read commits its record (``in_flight``) before the tool runs, so a duplicate arriving
  while the tool is still running gets ``409 idempotency_key_in_use`` (Retry-After: 1);
* the same key with another body is ``422 idempotency_key_reused``;
* a request refused before it did anything rolls its record back with everything else,
  so the agent may fix the request and send it again with the same key.

Contract under concurrency: of any number of simultaneous requests with one key and one
body, exactly one is processed; each other one answers either that request's stored
response or 409. A request whose process died leaves an ``in_flight`` record that another
request with the same key and body takes over once ``locked_until`` has passed; if that
request had created its call, the call's answer is replayed once the call is terminal,
and 409 is the answer until then.

Retention: a record is kept for ``IDEMPOTENCY_KEY_TTL`` seconds (a day by default) and then
swept (``sweep``), unless its request still holds it. A replay within that time carries
``Idempotent-Replayed: true``. After it, the key's answer is gone; a call it created keeps
the key, so the key cannot create a second call: it is refused as
``idempotency_key_expired`` (``intake``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from enum import Enum
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.models import ToolCall
from gateway import errors, retention, sql
from gateway.models import IdempotencyRecord
from gateway.responses import StoredResponse
from tools_registry.models import Agent
from tools_registry.policy import LONGEST_READ_SECONDS

# How long a request holds its key before another request with it may take over: longer
# than any read can run inside a request under any valid policy (timeout x attempts +
# backoff), with a margin for the database work around it and a paused process.
IN_FLIGHT_GRACE_SECONDS = 30
IN_FLIGHT_LOCK = timedelta(seconds=LONGEST_READ_SECONDS + IN_FLIGHT_GRACE_SECONDS)

# A key: 1 to 255 printable ASCII characters, no space at either end (HTTP would strip it).
MAX_KEY_LENGTH = 255
KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
_KEY = re.compile(KEY_PATTERN)
REPLAYED_HEADER = "Idempotent-Replayed"
SWEEP_BATCH = 5000


def valid_key(key: str) -> bool:
    return len(key) <= MAX_KEY_LENGTH and _KEY.fullmatch(key) is not None


def replayed(response: StoredResponse) -> StoredResponse:
    """The stored answer, marked as a replay of an earlier request."""
    return replace(response, headers={**response.headers, REPLAYED_HEADER: "true"})


class Claim(Enum):
    NEW = "new"  # this request inserted the key
    TAKEN_OVER = "taken_over"  # the key's first request died; this one continues its work
    TAKEN = "taken"  # another request has (or had) the key: answer with ``answer_for``


def claim(*, agent: Agent, key: str, request_hash: str) -> Claim:
    """Take the key for this request, inside the caller's transaction.

    Blocks while another transaction holds an uncommitted claim of the same key.
    """
    now = timezone.now()
    if sql.insert_key(
        agent_id=agent.pk,
        key=key,
        request_hash=request_hash,
        now=now,
        locked_until=now + IN_FLIGHT_LOCK,
    ):
        return Claim.NEW
    # The conditional UPDATE takes the row lock: of two requests taking over the same
    # abandoned key, the second sees the new locked_until and does not match.
    taken_over = IdempotencyRecord.objects.filter(
        agent=agent,
        key=key,
        request_hash=request_hash,
        state=IdempotencyRecord.State.IN_FLIGHT,
        locked_until__lte=now,
    ).update(locked_until=now + IN_FLIGHT_LOCK)
    return Claim.TAKEN_OVER if taken_over else Claim.TAKEN


def answer_for(
    *,
    agent: Agent,
    key: str,
    request_hash: str,
    settled: Callable[[], tuple[StoredResponse, ToolCall] | None],
    unbound: tuple[str, str] | None = None,
) -> StoredResponse:
    """The answer to a request whose key is taken: the stored response, or 422 or 409.

    A key still in flight may already have an answer its request never stored: the call it
    created ended without it (a read whose request died, failed since by the abandoned-read
    sweep). ``settled`` finds that answer; it is stored and replayed from then on.
    ``unbound``: (the request's hash as it was before keys bound verified users, the
    user's id), for the records of before that change (``intake._unbound_hash``).
    """
    record = IdempotencyRecord.objects.filter(agent=agent, key=key).first()
    if record is None:
        # The holder was rolled back (refused) between our insert and this read.
        raise errors.idempotency_key_in_use()
    if record.request_hash != request_hash and not _made_for(record, unbound):
        raise errors.idempotency_key_reused()
    if record.state == IdempotencyRecord.State.COMPLETE:
        stored = record.response_body or {}
        return replayed(
            StoredResponse(
                status=record.response_status or 200,
                body=stored.get("body", {}),
                headers=stored.get("headers", {}),
            )
        )
    if (answer := settled()) is not None:
        response, call = answer
        # Sent as stored, byte for byte the first answer and every replay (``complete``).
        kept: list[dict[str, Any]] = []
        with transaction.atomic():
            complete(agent=agent, key=key, response=response, call=call, stored=kept.append)
        return replayed(replace(response, body=kept[0]) if kept else response)
    raise errors.idempotency_key_in_use()


def _made_for(record: IdempotencyRecord, unbound: tuple[str, str] | None) -> bool:
    """Whether a record stored before keys bound verified users is this request's: its hash
    the request's unbound one, and its call made for the same verified user."""
    if unbound is None or record.request_hash != unbound[0]:
        return False
    # Still in flight, the record names no call yet: the call its key made, if any.
    made = (
        ToolCall.objects.filter(pk=record.call_id)
        if record.call_id is not None
        else ToolCall.objects.filter(agent_id=record.agent_id, request_key=record.key)
    )
    return made.filter(end_user_source="verified", on_behalf_of=unbound[1]).exists()


def complete(
    *,
    agent: Agent,
    key: str,
    response: StoredResponse,
    call: ToolCall | None,
    stored: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Store the response to replay. Runs inside the caller's transaction where it has one.

    ``stored`` is called with the body as the database keeps it, as replays will answer it,
    once the database has answered: PostgreSQL keeps a JSON object's keys in an order of
    its own, and an answer that is to read like its replays is sent as stored."""
    sql.complete_key(
        agent_id=agent.pk,
        key=key,
        status=response.status,
        body=response.body,
        headers=response.headers,
        call_id=call.pk if call else None,
        now=timezone.now(),
        stored=stored,
    )


def abandon(*, agent: Agent, key: str) -> None:
    """Let the next request with this key take over at once (this one failed unexpectedly
    after its claim was committed)."""
    with transaction.atomic():
        IdempotencyRecord.objects.filter(
            agent=agent, key=key, state=IdempotencyRecord.State.IN_FLIGHT
        ).update(locked_until=timezone.now())


def sweep(*, batch: int = SWEEP_BATCH) -> int:
    """Delete the records older than ``IDEMPOTENCY_KEY_TTL``; returns how many. In batches,
    so a large backlog never holds a long lock.

    A record whose request still holds it (in flight, locked) is kept whatever its age:
    swept while its read runs (a TTL shorter than a read), a duplicate meanwhile was
    refused as expired instead of 409, and the read's answer was never stored for replays.
    Each DELETE repeats the condition, so a record taken over since it was picked (its lock
    renewed) is kept too."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL)
    expired = IdempotencyRecord.objects.filter(created_at__lt=cutoff).exclude(
        state=IdempotencyRecord.State.IN_FLIGHT, locked_until__gt=now
    )
    return retention.delete_in_batches(expired, batch=batch)
