"""Sending a call to the executor. Called only after the approving transaction committed."""

from __future__ import annotations

import logging
from uuid import UUID

from django.conf import settings

logger = logging.getLogger(__name__)


def send_execution(call_id: UUID) -> None:
    """Hand the call id to a Celery worker (or run it now, in the embedded eager mode).

    A failure to send is logged, not raised: the call is already ``approved`` in the
    database, and the re-send sweep picks up approved calls whose task never started.
    """
    from approvals.tasks import execute_call

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
    from approvals.models import ToolCall
    from approvals.services.execution import handler_budget_seconds

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
