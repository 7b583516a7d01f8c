"""Celery tasks: thin, they take ids and call the executor or the sweeps."""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from approvals import executor


@shared_task(
    name="approvals.execute_call", acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def execute_call(call_id: str) -> None:
    """Run one approved call. Safe to deliver any number of times: the claim admits one."""
    executor.execute(UUID(call_id))


@shared_task(name="approvals.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Beat-driven repairs: re-send lost executions, expire silent leases, expire overdue
    approvals."""
    from approvals import sweeps

    return sweeps.run_executor_sweeps().as_dict()


@shared_task(name="approvals.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """Beat-driven reconciliation of unknown outcomes through the tools' lookups."""
    from approvals import sweeps

    return sweeps.run_reconciliation().as_dict()


@shared_task(name="approvals.notify_reviewers", ignore_result=True)
def notify_reviewers() -> dict[str, int]:
    """Beat-driven e-mails: new pending calls, reminders, escalations before expiry."""
    from approvals import sweeps

    return sweeps.run_notifications().as_dict()


@shared_task(name="approvals.deliver_webhook", ignore_result=True)
def deliver_webhook(delivery_id: str) -> None:
    """Make the due attempt of one webhook delivery; a duplicate finds nothing due."""
    from approvals import webhooks

    webhooks.deliver(UUID(delivery_id))


@shared_task(name="approvals.webhook_sweep", ignore_result=True)
def webhook_sweep() -> int:
    """Beat-driven: send the due webhook retries and re-send lost first attempts."""
    from approvals import webhooks

    return webhooks.sweep()
