""" "Verify the chain now": an auditor asks, a worker walks the chain in the background, the
page shows its progress, and the outcome is recorded with who asked and when.

The walk itself is ``audit.verify.verify_chain``; this module only keeps the run's row
(``VerificationRun``) and its audit events. One run at a time: asking while one is queued
or running joins it rather than starting a second walk. One walk at a time, too, when a run
taken for dead was not (it waited in the workers' backlog, or walked without reporting):
a run that a later one superseded ends without walking, and so does one that reaches a
worker while another walks, since the walk holds a PostgreSQL advisory lock for its length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Exists, OuterRef
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit import verify
from audit.log import record
from audit.models import VerificationRun

# A run that has not reported progress for this long is taken for dead (its worker died);
# asking again starts a new one.
logger = logging.getLogger(__name__)

STALE_AFTER = timedelta(minutes=10)
# Any constant works (not the sealer's); it only has to be the same in every process.
REQUEST_LOCK_KEY = 0x566572696679  # "Verify"
# Held by the worker that walks, for the whole walk: a second walk cannot start beside it
# whatever a run's row says (STALE_AFTER is a guess; the lock dies with its holder).
WALK_LOCK_KEY = 0x57616C6B  # "Walk"


def active_run() -> VerificationRun | None:
    cutoff = timezone.now() - STALE_AFTER
    return (
        VerificationRun.objects.exclude(state=VerificationRun.State.DONE)
        # Silence, not age: a walk of a long trail may run past STALE_AFTER.
        .alias(last_heard=Coalesce("progressed_at", "requested_at"))
        .filter(last_heard__gte=cutoff)
        .order_by("-pk")
        .first()
    )


def latest_run() -> VerificationRun | None:
    """The last run that finished walking: one whose worker died never will, and showing it
    would hide the button that starts a new one; one that ended without walking has no
    outcome to show."""
    return (
        VerificationRun.objects.filter(state=VerificationRun.State.DONE, started_at__isnull=False)
        .order_by("-pk")
        .first()
    )


def is_dead(run: VerificationRun) -> bool:
    """Not finished and past STALE_AFTER: ``active_run()`` no longer joins it."""
    last_heard = run.progressed_at or run.requested_at
    return run.state != VerificationRun.State.DONE and last_heard < timezone.now() - STALE_AFTER


def was_not_run(run: VerificationRun) -> bool:
    """Ended without walking: a later run superseded it, or another walk held the lock."""
    return run.state == VerificationRun.State.DONE and run.started_at is None


@transaction.atomic
def request_verification(*, user: Any, send: Any) -> tuple[VerificationRun, bool]:
    """Queue a walk of the chain for ``user`` (audited), or join the one under way.
    ``send(run_id)`` is called after the commit to hand the run to a worker. Returns the run
    and whether it is new."""
    # Serialises two auditors clicking at once: the second waits for the first's commit, then
    # sees its run. A row lock cannot: before the first commits there is no run row to lock.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [REQUEST_LOCK_KEY])
    running = active_run()
    if running is not None:
        return running, False
    run = VerificationRun.objects.create(requested_by=user, requested_by_label=user.get_username())
    record(
        action="audit.verification_requested", actor=user, outcome="queued", data={"run": run.pk}
    )
    transaction.on_commit(lambda: _send_or_end(run.pk, send))
    return run, True


def _send_or_end(run_id: int, send: Any) -> None:
    """Hand the run to a worker; when the queue cannot take it (the broker is down), end it
    unwalked, logged: a queued run no worker will ever take would be joined by every auditor
    who asks for STALE_AFTER, and the request that asked would answer 500."""
    try:
        send(run_id)
    except Exception:
        logger.exception("could not queue chain verification run %s", run_id)
        _end_unwalked(run_id, "not run: the task queue could not be reached; ask again")


@contextmanager
def _connection_of_its_own() -> Iterator[BaseDatabaseWrapper]:
    """A second connection to the database for the block (SQLite's one otherwise)."""
    if connection.vendor != "postgresql":
        yield connection
        return
    own = connection.copy()
    try:
        yield own
    finally:
        own.close()


@contextmanager
def walk_lock() -> Iterator[bool]:
    """Whether this process may walk, held until the block ends. A transaction-scoped lock
    on a connection of its own: the walk's connection stays in autocommit (it cancels its
    COPY at a broken link, which would abort a transaction), a session lock would stay
    behind on a PgBouncer server connection, and a worker that dies drops the connection
    and so the lock."""
    if connection.vendor != "postgresql":
        yield True
        return
    with _connection_of_its_own() as holder:
        holder.set_autocommit(False)
        try:
            with holder.cursor() as cursor:
                # Idle in its transaction for the whole walk: the timeout operations.md
                # advises for the workers' role would end it, and the lock, a minute in.
                cursor.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [WALK_LOCK_KEY])
                held = bool(cursor.fetchone()[0])
            yield held
        finally:
            holder.rollback()  # releases the lock before the next walk looks for it


def scheduled_verification() -> bool | None:
    """Beat's walk (``audit.verify_chain``), recorded in the trail: whether the chain is
    whole, or None when another walk holds the lock (an auditor's, or the last hour's, still
    walking a long chain): it is not started beside it, and the next hour's walks."""
    with walk_lock() as may_walk:
        if not may_walk:
            logger.info("the scheduled chain walk did not start: another walk is under way")
            return None
        return verify.record_verification(verify.verify_chain_or_unreadable()).ok


def _end_unwalked(run_id: int, reason: str) -> None:
    VerificationRun.objects.filter(pk=run_id, state=VerificationRun.State.QUEUED).update(
        state=VerificationRun.State.DONE, finished_at=timezone.now(), reason=reason
    )


def run_verification(run_id: int) -> VerificationRun | None:
    """The worker's side: claim the run, walk the chain reporting progress, record the
    outcome as the asking auditor's ``audit.chain_verified`` event. No transaction stays
    open on the walk's connection; each progress report is its own small UPDATE. Returns
    None, and walks nothing, for a run already claimed or done, one superseded by a later
    run, or one delivered while another walk holds the lock."""
    with walk_lock() as may_walk:
        if not may_walk:
            _end_unwalked(run_id, "not run: another walk of the chain was under way")
            return None
        return _claim_and_walk(run_id)


def _claim_and_walk(run_id: int) -> VerificationRun | None:
    # A later run exists only if this one was taken for dead (asking joins a live one); it
    # answers the auditors' question, so this one, reaching a worker late, stands down.
    later = VerificationRun.objects.filter(pk__gt=OuterRef("pk"))
    claimed = (
        VerificationRun.objects.filter(pk=run_id, state=VerificationRun.State.QUEUED)
        .filter(~Exists(later))
        .update(
            state=VerificationRun.State.RUNNING,
            started_at=timezone.now(),
            progressed_at=timezone.now(),
        )
    )
    if not claimed:
        superseder = VerificationRun.objects.filter(pk__gt=run_id).order_by("pk").first()
        if superseder is not None:
            _end_unwalked(
                run_id,
                f"not run: superseded by run {superseder.pk}, asked for after "
                "this one was taken for dead",
            )
        return None  # a duplicate delivery, a run already done, or a superseded one
    run = VerificationRun.objects.select_related("requested_by").get(pk=run_id)

    # Reported while the chain streams in on the walk's connection (a COPY), which takes no
    # other statement until the stream ends: a report sent there waits for ever.
    with _connection_of_its_own() as reporter:

        def progress(checked: int, total: int) -> None:
            with reporter.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {VerificationRun._meta.db_table}"  # noqa: S608 - the model's name
                    " SET checked = %s, total = %s, progressed_at = %s WHERE id = %s",
                    [checked, total, timezone.now(), run_id],
                )

        result = verify.verify_chain_or_unreadable(progress=progress)
    with transaction.atomic():
        verify.record_verification(result, actor=run.requested_by)
        VerificationRun.objects.filter(pk=run_id).update(
            state=VerificationRun.State.DONE,
            finished_at=timezone.now(),
            checked=result.checked,
            total=max(result.checked, run.total),
            # None: no verdict (the walk cut short, the anchor unreadable), not "broken".
            ok=None if result.interrupted else result.ok,
            reason=result.reason,
        )
    run.refresh_from_db()
    return run
