"""The executor's Celery entry point: thin, it takes a call id and runs the call."""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from approvals.execution import runner


# The name is the wire format of queued messages: it stays, wherever the code lives.
@shared_task(
    name="approvals.execute_call", acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def execute_call(call_id: str) -> None:
    """Run one approved call. Safe to deliver any number of times: the claim admits one."""
    runner.execute(UUID(call_id))
