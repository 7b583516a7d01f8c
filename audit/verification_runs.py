""" "Verify the chain now": an auditor asks, a worker walks the chain in the background, the
page shows its progress, and the outcome is recorded with who asked and when.

The walk itself is ``audit.verify.verify_chain``; this module only keeps the run's row
(``VerificationRun``) and its audit events. One run at a time: asking while one is queued
or running joins it rather than starting a second walk.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit import verify
from audit.log import record
from audit.models import VerificationRun

# A run that has not reported progress for this long is taken for dead (its worker died);
# asking again starts a new one.
STALE_AFTER = timedelta(minutes=10)
# Any constant works (not the sealer's); it only has to be the same in every process.
REQUEST_LOCK_KEY = 0x566572696679  # "Verify"


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
    """The last run that finished: one whose worker died never will, and showing it would
    hide the button that starts a new one."""
    return VerificationRun.objects.filter(state=VerificationRun.State.DONE).order_by("-pk").first()


def is_dead(run: VerificationRun) -> bool:
    """Not finished and past STALE_AFTER: ``active_run()`` no longer joins it."""
    last_heard = run.progressed_at or run.requested_at
    return run.state != VerificationRun.State.DONE and last_heard < timezone.now() - STALE_AFTER


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
    transaction.on_commit(lambda: send(run.pk))
    return run, True


def run_verification(run_id: int) -> VerificationRun | None:
    """The worker's side: claim the run, walk the chain reporting progress, record the
    outcome as the asking auditor's ``audit.chain_verified`` event. No transaction stays
    open during the walk; each progress report is its own small UPDATE."""
    claimed = VerificationRun.objects.filter(pk=run_id, state=VerificationRun.State.QUEUED).update(
        state=VerificationRun.State.RUNNING,
        started_at=timezone.now(),
        progressed_at=timezone.now(),
    )
    if not claimed:
        return None  # a duplicate delivery, or a run already done
    run = VerificationRun.objects.select_related("requested_by").get(pk=run_id)

    def progress(checked: int, total: int) -> None:
        VerificationRun.objects.filter(pk=run_id).update(
            checked=checked, total=total, progressed_at=timezone.now()
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
