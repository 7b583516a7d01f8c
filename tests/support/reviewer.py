"""A reviewer in a thread: decides every pending call as it appears, then runs the approved
ones as the worker would (the tests' live server has no Celery worker)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth.models import User
from django.db import connections

from approvals.execution import runner
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide

Verdict = Callable[[ToolCall], tuple[str, str]]


def approve_all(call: ToolCall) -> tuple[str, str]:
    return "approve", "Looks right."


@contextmanager
def reviewing(
    reviewer: User,
    verdict: Verdict = approve_all,
    correct: Callable[[ToolCall], dict[str, Any]] | None = None,
) -> Iterator[list[ToolCall]]:
    """While the block runs, decide each pending call with ``verdict(call)`` ->
    (``"approve"``/``"reject"``, comment), an approval with the arguments ``correct(call)``
    gives, when given. Yields the calls decided."""
    decided: list[ToolCall] = []
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                for call in ToolCall.objects.filter(status=Status.PENDING).exclude(
                    pk__in=[c.pk for c in decided]
                ):
                    choice, comment = verdict(call)
                    edited = correct(call) if correct and choice == "approve" else None
                    decide(
                        call_id=call.pk,
                        reviewer=reviewer,
                        verdict=choice,
                        comment=comment,
                        edited_arguments=edited,
                    )
                    decided.append(call)
                    if choice == "approve":
                        runner.execute(call.pk)
                time.sleep(0.05)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield decided
    finally:
        stop.set()
        thread.join(timeout=10)
