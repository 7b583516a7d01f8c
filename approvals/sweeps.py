"""Periodic repairs run by celery beat (and by ``manage.py run_sweeps`` and one management
command per sweep). Each sweep reads a batch of candidate ids, then moves each call through
a service function that re-checks it under its row lock, so any number of sweeps may run at
once, beside any number of workers.

A sweep never waits for a call's row: one that another transaction holds is skipped
(``SKIP LOCKED``) and looked at again in the next pass. The holder may be a worker paused
inside its claim (SIGSTOP, a frozen VM, a partition from PostgreSQL), and waiting for it
would hold up this sweep and every later one, each in a worker of its own, until it came
back: no lease would expire and no lost message would be sent again meanwhile."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection, transaction
from django.db.models import (
    Case,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Least, Now
from django.utils import timezone

from approvals import events, hooks, notifications
from approvals.execution import send
from approvals.execution.finish import expire_lease
from approvals.models import Decision, Status, ToolCall, Verdict
from approvals.services.calls import expire_call, fail_abandoned_read
from approvals.services.decisions import complete_quorum
from approvals.services.recovery import reconcile_call
from tools_registry.policy import Risk

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    resent: int = 0
    leases_expired: int = 0
    reconciled: int = 0
    rerun: int = 0
    escalated: int = 0
    expired: int = 0
    reads_abandoned: int = 0
    quorums_completed: int = 0
    # Reviewer e-mails (approvals.notifications): new calls, reminders, escalations to a team.
    notified: int = 0
    reminded: int = 0
    escalations_sent: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __bool__(self) -> bool:
        return any(self.as_dict().values())


class SweepFailed(Exception):
    """Steps of a pass raised (each logged with its traceback where it failed); the others
    ran, and ``report`` is what they did. Raised once all have run, so the pass (beat's task,
    ``run_sweeps`` run once) still ends as failed."""

    def __init__(self, failed: list[str], report: SweepReport) -> None:
        super().__init__(f"sweep steps failed: {', '.join(failed)}")
        self.failed = failed
        self.report = report


@dataclass(frozen=True)
class Failed:
    """What ``on_its_own`` gives for a run that raised."""

    error: Exception


def on_its_own[T](run: Callable[[], T], label: str, *, then: str) -> T | Failed:
    """``run()``, or ``Failed`` when it raised: logged with its traceback (``then`` says
    what happens next), so that what follows still runs. One step failing on every pass
    (a statement PostgreSQL refuses, SQLite's "database is locked") ended the pass, and the
    steps after it (lease expiry, expiry of overdue calls) never ran at all."""
    try:
        return run()
    except Exception as error:
        logger.exception("%s failed; %s", label, then)
        if not connection.in_atomic_block:
            # A connection the failure broke (its server gone) is dropped, not used again.
            close_old_connections()
        return Failed(error)


def _each_on_its_own(label: str, steps: dict[str, Callable[[], int]]) -> SweepReport:
    """The steps in order, each whatever the others did; the fields of ``SweepReport`` they
    fill are their names. Raises ``SweepFailed`` once all have run if any raised."""
    counts: dict[str, int] = {}
    failed: list[str] = []
    for name, step in steps.items():
        result = on_its_own(step, f"{label} step {name}", then="the pass goes on")
        if isinstance(result, Failed):
            failed.append(name)
        else:
            counts[name] = result
    report = SweepReport(**counts)
    if report:
        logger.info("%s: %s", label, report.as_dict())
    if failed:
        raise SweepFailed(failed, report)
    return report


# The longest gap between two copies of an approved call's task, in re-send intervals
# (EXECUTOR_RESEND_AFTER_SECONDS): 16 minutes by default.
RESEND_GAP_MAX_INTERVALS = 16


def resend_stalled_approved(*, now: datetime | None = None, limit: int = 500) -> int:
    """Send again the approved calls whose task never started (a lost message, a dead web
    process between commit and send, a worker killed before its claim). A duplicate is
    harmless: the claim admits one.

    The sweep cannot tell a lost task from one still queued behind others (a burst of
    approvals, workers down for a while). A call is sent again
    ``EXECUTOR_RESEND_AFTER_SECONDS`` after its approval sent it, and after that once it
    has waited since its approval twice as long as when it was last sent; each copy expires
    unrun when the next may be sent (``send.send_execution``). Sent again every interval, a
    queue slower than that got one more copy of each approved call per interval, each to be
    received, claim-checked and dropped by a worker, and grew slower still; now one copy
    of a call at most can run, and a call that waited ``w`` has had about log2(w / interval)
    copies. One that expires unrun is sent again by a later pass: a call is never lost, and
    a lost task is sent again by the time the call has waited twice as long as when it was
    sent."""
    now = now or timezone.now()
    resend_after = settings.EXECUTOR_RESEND_AFTER_SECONDS
    # How long the call had waited since its approval when its task was last sent. A call
    # approved before approved_at was written (an upgrade) had waited none.
    # The gap between copies grows to RESEND_GAP_MAX_INTERVALS intervals at most: a queue
    # that Redis lost (a restart without persistence) held calls approved long before, and
    # an uncapped gap left them waiting about as long again.
    longest_gap = timedelta(seconds=resend_after * RESEND_GAP_MAX_INTERVALS)
    waited_when_sent = ExpressionWrapper(
        F("enqueued_at") - Coalesce(F("approved_at"), F("enqueued_at")),
        output_field=DurationField(),
    )
    gap = Least(waited_when_sent, Value(longest_gap, output_field=DurationField()))
    # Along call_approved_idx (enqueued_at), the second bound checked on each row it reads.
    due = Q(status=Status.APPROVED, enqueued_at__lt=now - timedelta(seconds=resend_after)) & Q(
        enqueued_at__lt=Value(now, output_field=DateTimeField()) - gap
    )
    stalled = list(
        ToolCall.objects.filter(due).order_by("enqueued_at").values_list("pk", flat=True)[:limit]
    )
    resent = 0
    for call_id in stalled:
        with transaction.atomic():
            # Mark first, under the row lock: two sweeps at once re-send each call once. A
            # call another transaction holds (a claim under way, maybe paused) is skipped.
            locked = ToolCall.objects.select_for_update(skip_locked=True).filter(due, pk=call_id)
            sent = list(locked.values_list("enqueued_at", "approved_at"))
            if not sent:
                continue
            sent_at, approved = sent[0]
            # enqueued_at is set (the filter compared it); approved_at is null for a call
            # approved before it was written, which counts from its last send on.
            assert sent_at is not None
            enqueued_at: datetime = sent_at
            approved_at: datetime = approved or enqueued_at
            ToolCall.objects.filter(pk=call_id).update(enqueued_at=now, approved_at=approved_at)
            call = ToolCall.objects.select_related("tool", "agent").get(pk=call_id)
            waited = (now - enqueued_at).total_seconds()
            events.execution_resent(call, waited_seconds=waited)
            # Live until the next copy may be sent: when the call has waited twice as long
            # as it has now. Relative to the sending process's clock, as Celery reckons it
            # (``now`` may be a pass run as if at another time).
            since_approval = (now - approved_at).total_seconds()
            expires = max(resend_after, min(since_approval, longest_gap.total_seconds()))
            transaction.on_commit(partial(send.send_execution, call_id, expires=expires))
            resent += 1
    return resent


def expire_leases(*, now: datetime | None = None, limit: int = 500) -> int:
    """Executing calls whose worker went silent past its lease become ``unknown`` (reads
    fail), with the fence bumped so the silent worker can no longer write. Leases are read
    against the database's clock (``now``: a sweep run as if at that time), which stamped
    them (``claim.lease_until``): the machines' clocks need not agree."""
    overdue = list(
        ToolCall.objects.filter(status=Status.EXECUTING, lease_until__lt=now or Now())
        .order_by("lease_until")
        .values_list("pk", flat=True)[:limit]
    )
    expired = 0
    for call_id in overdue:
        call = expire_lease(call_id=call_id, now=now, skip_locked=True)
        if call is not None:
            expired += 1
            # The execution ended here, not in its worker: usually a handler that ignored
            # its timeout, killed by Celery's hard time limit. The tool's breaker hears of
            # it as of any other execution, or a tool that hangs every call would keep
            # taking a worker for the limit's length, call after call.
            hooks.execution_finished(call.tool.name, call.status, call.error, found_by=hooks.SWEEP)
    return expired


# Where the last pass of reconciliation stopped (``in_turn``).
RECONCILE_CURSOR = "approvals:reconcile-sweep:after"


def reconcile_unknown(*, now: datetime | None = None, limit: int = 100) -> Counter[str]:
    """Ask the downstream about every unknown call not yet escalated, and about escalated
    ones again every ``EXECUTOR_RECHECK_ESCALATED_SECONDS`` (it may be able to tell now).

    Each pass goes on from where the last stopped (``in_turn``): a call this pass cannot
    settle (another transaction holds it, its check raises) is left where it was, and more
    of them than a pass takes, oldest first, would otherwise hide every newer call, pass
    after pass."""
    now = now or timezone.now()
    recheck_before = now - timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS)
    # Two queries, each planned on its own index: as one (an OR), the plan read every unknown
    # call, escalated ones a person has yet to settle included, each pass, the statistics
    # taking most of them for due (most calls were last changed long ago).
    unknown = ToolCall.objects.filter(status=Status.UNKNOWN)
    candidates = in_turn(
        unknown.filter(needs_attention=False),  # call_unknown_unescalated_idx
        unknown.filter(updated_at__lt=recheck_before),  # call_unknown_idx
        cursor=RECONCILE_CURSOR,
        limit=limit,
    )
    actions: Counter[str] = Counter()
    for call_id in candidates:
        try:
            actions[reconcile_call(call_id=call_id, now=now, skip_locked=True).action] += 1
        except Exception:
            # One call the sweep cannot settle must not hold up every call after it: logged,
            # the rest go on, and the next pass starts after the last one this pass took.
            logger.exception("reconciling call %s failed; the sweep goes on", call_id)
            actions["failed"] += 1
    return actions


def expire_overdue_pending(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Pending calls past their approval TTL expire; the agent learns it from the status."""
    now = now or timezone.now()
    # Soonest expiry first, along call_pending_expiry_id_idx. In the calls' default order
    # (newest first) the plan could walk the queue's index from its newest call and read
    # every waiting call to find the few overdue ones, each pass (statistics from a time
    # many were overdue were enough).
    overdue = list(
        ToolCall.objects.filter(status=Status.PENDING, expires_at__lte=now)
        .order_by("expires_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for call_id in overdue if expire_call(call_id=call_id, now=now, skip_locked=True))


def fail_abandoned_reads(*, now: datetime | None = None, limit: int = 500) -> int:
    """Reads left ``received`` by a request that died before running them fail (nothing
    ran), and their Idempotency-Key now replays that failure instead of staying in flight.

    A read is ``received`` only between its intake's commit and its claim, moments later
    in the same request; each candidate is failed only past the longest it could run
    (``services.calls.abandoned_after``), checked again under its row lock.
    """
    now = now or timezone.now()
    # No tool's policy lets a read be abandoned sooner than the grace alone.
    floor = now - timedelta(seconds=settings.EXECUTOR_LEASE_GRACE_SECONDS)
    candidates = list(
        ToolCall.objects.filter(status=Status.RECEIVED, risk=Risk.READ, created_at__lt=floor)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(
        1
        for call_id in candidates
        if fail_abandoned_read(call_id=call_id, now=now, skip_locked=True)
    )


# Where the last pass of the quorum sweep stopped: (created_at, id) of the last call it
# looked at. Shared by every process through the cache (Redis in services mode).
QUORUM_CURSOR = "approvals:quorum-sweep:after"

# How far behind the clock that stamped a call the clock of the web node that stamped an
# approval of it may be, and the sweep still find it (``decisions.CLOCK_SKEW`` believes a
# minute). More only makes each pass read an hour more of approvals.
QUORUM_CLOCK_SLACK = timedelta(hours=1)


def complete_restored_quorums(*, now: datetime | None = None, limit: int = 200) -> int:
    """Waiting calls with as many approvals given as they need: some did not stand when the
    last came (a reviewer's grant taken away), and may again (``decisions.complete_quorum``).
    Few calls ever qualify: a call whose last approval made its quorum is approved then.

    A call whose approvals will never stand again (its reviewer gone for good) stays a
    candidate until it expires, and so could any number of them: each pass goes on from
    where the last stopped (``QUORUM_CURSOR``), round to the oldest again once past the
    newest: however many calls the sweep cannot approve, every candidate is looked at once
    in each ``ceil(candidates / limit)`` passes, no call twice in a pass."""
    now = now or timezone.now()
    # Approvals of an inactive account never stand (``guards.still_approving``): a call
    # that needs one is no candidate until the account is active again.
    given = Count(
        "decisions",
        filter=Q(
            decisions__verdict=Verdict.APPROVE,
            decisions__arguments_hash=F("arguments_hash"),
            decisions__reviewer__is_active=True,
        ),
    )
    # Almost every waiting call has no approval at all, and counting the decisions of each
    # cost a pass time in step with the queue (1.5 s at 200,000 waiting calls). A candidate
    # has at least one approval, given while it waited, so after it arrived: the approvals
    # given since the oldest waiting call arrived (decision_approval_time_idx) name every
    # candidate, and only theirs are counted. Less the slack, for a web node whose clock is
    # behind the one that stamped the call.
    oldest = (
        ToolCall.objects.filter(status=Status.PENDING, approvals_required__gt=0)
        .order_by("created_at", "id")
        .values_list("created_at", flat=True)
        .first()
    )
    if oldest is None:
        return 0
    # A value, not a subquery: planned without it, the approvals read looked like a third
    # of them all, and the plan read every waiting call again.
    approved = Decision.objects.filter(
        verdict=Verdict.APPROVE, created_at__gte=oldest - QUORUM_CLOCK_SLACK
    )
    waiting = (
        ToolCall.objects.filter(
            status=Status.PENDING,
            approvals_required__gt=0,
            pk__in=approved.values("call_id"),
        )
        .annotate(given=given)
        .filter(given__gte=F("approvals_required"))
    )
    candidates = in_turn(waiting, cursor=QUORUM_CURSOR, limit=limit)
    return sum(1 for call_id in candidates if complete_quorum(call_id=call_id, now=now))


def in_turn(*candidates: QuerySet[ToolCall], cursor: str, limit: int) -> list[UUID]:
    """Up to ``limit`` of ``candidates`` (one query, or the union of several), by
    (created_at, id), starting after the last call the previous pass of the same sweep took
    (kept in the cache under ``cursor``), round to the oldest again once past the newest:
    every candidate is taken once in each ``ceil(candidates / limit)`` passes, however many
    of them a pass can do nothing for."""
    turn: Any = Value(0)
    if (after := _cursor(cursor)) is not None:
        # The calls after the cursor first, then from the oldest again, in one query.
        at, call_id = after
        later = Q(created_at__gt=at) | Q(created_at=at, id__gt=call_id)
        turn = Case(When(later, then=Value(0)), default=Value(1))
    each = [
        query.order_by().annotate(turn=turn).values_list("id", "created_at", "turn")
        for query in candidates
    ]
    union = each[0].union(*each[1:]) if len(each) > 1 else each[0]
    taken = [(call_id, at) for call_id, at, _ in union.order_by("turn", "created_at", "id")[:limit]]
    if taken:
        last_id, last_at = taken[-1]
        _keep_cursor(cursor, last_at, last_id)
    return [call_id for call_id, _ in taken]


def _cursor(name: str) -> tuple[datetime, UUID] | None:
    try:
        kept = cache.get(name)
    except Exception:
        # A cache that is down costs only fairness: this pass starts from the oldest call.
        logger.warning("the sweep's cursor %s could not be read", name, exc_info=True)
        return None
    try:
        return datetime.fromisoformat(kept[0]), UUID(kept[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _keep_cursor(name: str, at: datetime, call_id: UUID) -> None:
    try:
        cache.set(name, [at.isoformat(), str(call_id)], timeout=None)
    except Exception:
        logger.warning("the sweep's cursor %s could not be kept", name, exc_info=True)


def run_executor_sweeps(*, now: datetime | None = None) -> SweepReport:
    """Re-sends, lease expiry, expiry of pending calls and of abandoned reads: quick,
    database only. Each on its own (``_each_on_its_own``): one that raises leaves the others
    to run, and the pass raises ``SweepFailed`` after them."""
    return _each_on_its_own(
        "sweep",
        {
            "resent": partial(resend_stalled_approved, now=now),
            "leases_expired": partial(expire_leases, now=now),
            "expired": partial(expire_overdue_pending, now=now),
            "reads_abandoned": partial(fail_abandoned_reads, now=now),
            "quorums_completed": partial(complete_restored_quorums, now=now),
        },
    )


def run_reconciliation(*, now: datetime | None = None) -> SweepReport:
    """Reconciliation may wait on downstream systems, so beat runs it as its own task."""
    actions = reconcile_unknown(now=now)
    report = SweepReport(
        reconciled=actions["succeeded"], rerun=actions["rerun"], escalated=actions["escalated"]
    )
    if report:
        logger.info("reconciliation: %s", report.as_dict())
    return report


def run_notifications(*, now: datetime | None = None) -> SweepReport:
    """E-mails to reviewers; its own beat task, so a slow mail server delays no repair."""
    sent = notifications.run(now=now)
    report = SweepReport(
        notified=sent.notified, reminded=sent.reminded, escalations_sent=sent.escalated
    )
    if report:
        logger.info("notifications: %s", report.as_dict())
    return report


def run_all(*, now: datetime | None = None) -> SweepReport:
    """Every sweep once, in the order that settles a call soonest: a lease expired now is
    reconciled in the same pass, and nobody is told about a call that just expired. Each of
    the three on its own, as their steps are: ``SweepFailed`` after all ran if any raised."""
    failed: list[str] = []

    def part(run: Callable[..., SweepReport]) -> SweepReport:
        try:
            return run(now=now)
        except SweepFailed as error:  # each step that failed is logged where it failed
            failed.extend(error.failed)
            return error.report

    # Each field of the report is one part's: the pass's report is their sum.
    totals: Counter[str] = Counter()
    for label, run in (
        ("sweep", run_executor_sweeps),
        ("reconciliation", run_reconciliation),
        ("notifications", run_notifications),
    ):
        result = on_its_own(partial(part, run), label, then="the pass goes on")
        if isinstance(result, Failed):
            failed.append(label)
        else:
            totals.update(result.as_dict())
    report = SweepReport(**totals)
    if failed:
        raise SweepFailed(failed, report)
    return report
