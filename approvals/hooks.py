"""What the apps above approvals hear of a call's life, without approvals importing them.

``gateway`` (long-poll wake-ups, webhooks to agents, the circuit breaker) registers its
functions here in ``GatewayConfig.ready()``; approvals calls them at the one place each
event happens: ``transitions.change`` for every status change, the runner for every
finished execution. Dependencies keep pointing down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from approvals.models import ToolCall

# (call, previous status or None for a new call); runs inside the transaction that changed
# the status, so work it writes commits or rolls back with the change. Work that must not
# happen for a rolled-back change (a wake-up, a task) goes through ``transaction.on_commit``.
StatusChanged = Callable[["ToolCall", str | None], None]
# (tool name, status, error, found by): an execution ended, outside any transaction. Found
# by its worker, which stored the outcome (WORKER); by the lease sweep, which took the call
# from a worker gone silent (SWEEP); or by that worker come back (LATE), its outcome refused
# or, the call untouched since, accepted late. Each execution ends once as WORKER or SWEEP;
# a receiver that keeps its state in its own process never hears a sweep run in another,
# and may count the late outcome.
ExecutionFinished = Callable[[str, str, dict[str, Any] | None, str], None]
WORKER, SWEEP, LATE = "worker", "sweep", "late"

_status_changed: list[StatusChanged] = []
_execution_finished: list[ExecutionFinished] = []


def on_status_changed(receiver: StatusChanged) -> None:
    if receiver not in _status_changed:
        _status_changed.append(receiver)


def on_execution_finished(receiver: ExecutionFinished) -> None:
    if receiver not in _execution_finished:
        _execution_finished.append(receiver)


def status_changed(call: ToolCall, previous: str | None) -> None:
    for receiver in _status_changed:
        receiver(call, previous)


def execution_finished(
    tool_name: str, status: str, error: dict[str, Any] | None, *, found_by: str = WORKER
) -> None:
    for receiver in _execution_finished:
        receiver(tool_name, status, error, found_by)
