from __future__ import annotations

from celery import shared_task

from audit import chain, verification_runs


@shared_task(name="audit.seal_chain", ignore_result=True)
def seal_chain() -> int:
    """Seal what the writers appended, then anchor the new head outside the database."""
    return chain.seal_and_anchor()


@shared_task(name="audit.verify_chain", ignore_result=True)
def verify_chain() -> bool | None:
    """Walk the whole chain and record the outcome in the trail (the analytics panel shows
    it); not beside another walk."""
    return verification_runs.scheduled_verification()


@shared_task(name="audit.verify_chain_run", ignore_result=True)
def verify_chain_run(run_id: int) -> None:
    """An auditor's "Verify the chain now" (``audit.verification_runs``)."""
    verification_runs.run_verification(run_id)


def send_verification_run(run_id: int) -> None:
    verify_chain_run.delay(run_id)
