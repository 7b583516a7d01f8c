"""Celery tasks of the edge: thin, they take ids and call the webhook delivery.

Their names are the wire format of queued messages and beat's schedule: they stay.
"""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from gateway import idempotency, retention, webhooks


@shared_task(name=webhooks.DELIVER_TASK, ignore_result=True)
def deliver_webhook(delivery_id: str) -> None:
    """Make the due attempt of one webhook delivery; a duplicate finds nothing due."""
    webhooks.deliver(UUID(delivery_id))


@shared_task(name="approvals.webhook_sweep", ignore_result=True)
def webhook_sweep() -> int:
    """Beat-driven: send the due webhook retries and re-send lost first attempts."""
    return webhooks.sweep()


@shared_task(name="gateway.idempotency_sweep", ignore_result=True)
def idempotency_sweep() -> int:
    """Beat-driven: forget the Idempotency-Key answers older than IDEMPOTENCY_KEY_TTL."""
    return idempotency.sweep()


@shared_task(name="gateway.sessions_sweep", ignore_result=True)
def sessions_sweep() -> int:
    """Beat-driven: delete MCP sessions that are over and agent sessions long idle."""
    return retention.sweep()
