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
    transitions.move(call, Status.APPROVED, enqueued_at=timezone.now(), **fields)
    transaction.on_commit(partial(send_execution, call.pk))


def send_execution(call_id: UUID) -> None:
    """Hand the call id to a Celery worker (or run it now, in the embedded eager mode).

    A failure to send is logged, not raised: the call is already ``approved`` in the
    database, and the re-send sweep picks up approved calls whose task never started.
    """
    try:
        execute_call.apply_async((str(call_id),), **time_limits(call_id))
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
