"""What the edge does when a call's status changed: wake its long-pollers, push its webhook.

Registered with ``approvals.hooks`` (``GatewayConfig.ready``), so it runs inside every
transaction that moves a call (``approvals.transitions.change``). The webhook's delivery
row is written in that same transaction (an outbox: if the process dies after commit, the
sweep still finds the row); the wake-up and the delivery task are sent only after commit,
so nobody is told about a change that was rolled back.
"""

from __future__ import annotations

import logging
from functools import partial
from uuid import UUID

from django.db import transaction

from approvals.models import ToolCall
from gateway import longpoll, webhooks

logger = logging.getLogger(__name__)


def status_changed(call: ToolCall, previous: str | None) -> None:
    """Schedule the notifications of ``call``'s new status; runs inside its transaction."""
    deliveries = []
    if call.callback_url:
        # A rejection is both the reviewers' decision and the call's end: two events.
        if webhooks.decided(call, previous):
            deliveries.append(webhooks.schedule(call, "call.decided"))
        if event := webhooks.event_of(call, previous):
            deliveries.append(webhooks.schedule(call, event))
    if previous is None and not deliveries:
        return  # a new call: nobody waits on it yet
    transaction.on_commit(partial(_after_commit, call.pk, call.status, deliveries))


def _after_commit(call_id: UUID, status: str, deliveries: list[UUID]) -> None:
    # Neither step may fail the request that made the change: a lost wake-up is caught by
    # the long-poll's own re-check, a lost delivery task by the webhook sweep.
    try:
        longpoll.publish(call_id, status)
    except Exception:
        logger.exception("could not publish the status of call %s", call_id)
    for delivery_id in deliveries:
        webhooks.send(delivery_id)
