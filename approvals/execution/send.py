"""Sending a call to the executor: after the transaction that approved it commits.

Dependencies point one way: the services that approve a call use this module, which sends
the task of ``tasks``, which runs ``runner`` (claim, handler, finish). Nothing below here
approves or sends.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals import transitions
from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall
from tools_registry.policy import handler_budget_seconds

logger = logging.getLogger(__name__)


def approve(call: ToolCall, **fields: Any) -> None:
    """Move a call the caller holds locked to ``approved`` and send it to the executor once
    the transaction commits (never from inside it: a rolled-back approval runs nothing).

    Reviewers' quorum, a person's re-run, the agent's retry and reconciliation all approve
    through here. If the message is lost, the re-send sweep finds the call ``approved``.
    """
    now = timezone.now()
    transitions.move(call, Status.APPROVED, enqueued_at=now, approved_at=now, **fields)
    transaction.on_commit(partial(send_execution, call.pk))


def send_execution(call_id: UUID, *, expires: float | None = None) -> None:
    """Hand the call id to a Celery worker (or run it now, in the embedded eager mode).

    The task is dropped unrun by the worker that receives it once ``expires`` seconds have
    passed (``EXECUTOR_RESEND_AFTER_SECONDS`` unless given): when the re-send sweep may
    send the call's next copy (``sweeps.resend_stalled_approved``), so that of the copies
    a slow queue holds, one at most can still run. One that expires unrun loses nothing:
    the call is still ``approved``, and the sweep sends it again.

    A failure to send is logged, not raised: the call is already ``approved`` in the
    database, and the re-send sweep picks up approved calls whose task never started.
    """
    if expires is None:
        expires = settings.EXECUTOR_RESEND_AFTER_SECONDS
    try:
        execute_call.apply_async((str(call_id),), expires=expires, **time_limits(call_id))
    except Exception:
        logger.exception(
            "could not send call %s to the executor; the sweep will re-send it", call_id
        )


def time_limits(call_id: UUID) -> dict[str, float]:
    """Celery's per-task limits for one execution: the hard guard on a handler that does not
    honour its timeout.

    At ``soft_time_limit`` Celery raises ``SoftTimeLimitExceeded`` inside the task: the
    handler stops and the outcome is stored as ``unknown`` (then reconciled). At
    ``time_limit`` the worker child is killed; the call's lease then expires and the sweep
    makes it ``unknown``. Both leave the broker message acknowledged; nothing is retried
    blindly. Prefork workers only (the default pool); the eager mode ignores them.
    """
    tool = (
        ToolCall.objects.filter(pk=call_id)
        .values("tool__timeout_seconds", "tool__max_attempts")
        .first()
    )
    if tool is None:
        return {}
    budget = handler_budget_seconds(
        timeout_seconds=tool["tool__timeout_seconds"], max_attempts=tool["tool__max_attempts"]
    )
    soft = budget + settings.EXECUTOR_SOFT_LIMIT_GRACE_SECONDS
    return {
        "soft_time_limit": soft,
        "time_limit": soft + settings.EXECUTOR_HARD_LIMIT_GRACE_SECONDS,
    }
