"""Beat-driven Celery tasks of the lifecycle: thin, they call the sweeps.

Calls are executed by ``approvals.execution.tasks``; these tasks only repair and remind.
Their names are the wire format of queued messages and beat's schedule: they stay.
"""

from __future__ import annotations

from celery import shared_task

from approvals import sweeps


@shared_task(name="approvals.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Re-send lost executions, expire silent leases, overdue approvals and abandoned reads."""
    return sweeps.run_executor_sweeps().as_dict()


@shared_task(name="approvals.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Reconciliation of unknown outcomes through the tools' lookups."""
    return sweeps.run_reconciliation().as_dict()


@shared_task(name="approvals.notify_reviewers", ignore_result=True)
def notify_reviewers() -> dict[str, int]:
    """E-mails: new pending calls, reminders, escalations before expiry."""
    return sweeps.run_notifications().as_dict()
