"""The lifecycle of a tool call: the transition table, and the one door every status write
goes through.

read:              (new) -> received -> executing -> succeeded | failed
                            received -> failed   (refused at the claim; or abandoned: its
                                                  request died before running it)
write/destructive: (new) -> pending -> approved -> executing -> succeeded | failed | unknown
                            pending -> rejected | expired | cancelled
                            approved -> failed   (refused at the claim: the tool or the agent
                                                  was switched off, or the tool changed)
write only:                 approved -> unknown  (a re-run of an earlier attempt, refused at
                                                  its claim: that attempt's outcome stays
                                                  unknown, and goes to a person)
                            unknown -> succeeded | failed   (reconciled, resolved by a person,
                                                  or the lease's worker come back late)
write only:                 unknown -> approved  (reconciled: not done, re-run, same key)
                            failed  -> approved  (the agent's retry, at most
                                                  EXECUTOR_AGENT_RETRIES times; or a
                                                  person's re-run)

A write is created ``pending``: it is received and sent to review in one transaction. A
destructive call gets one attempt: after a failure or an unknown outcome a person records
what happened, and an effect still wanted is a new call, with its own approvals.

``change`` is the door: creation, the executor's claim and fenced finish, reviewers'
decisions, the agent's requests and every sweep write ``status`` through it (or through
``move``, the same door for a move that has to match, sent with the COMMIT) and nothing
else does. Its compare-and-set is built from this table, so the table cannot be restated
(or contradicted) anywhere else.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db import connection
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from approvals import hooks, sql
from approvals.models import Status, ToolCall
from core import db
from tools_registry.policy import Risk

ANY_RISK = frozenset(Risk.values)
REVIEWED = frozenset({Risk.WRITE, Risk.DESTRUCTIVE})
READ = frozenset({Risk.READ})
WRITE = frozenset({Risk.WRITE})

# (from, to, the risk classes that may make the move); ``None`` is a call not yet stored.
MOVES: tuple[tuple[str | None, str, frozenset[str]], ...] = (
    (None, Status.RECEIVED, READ),
    (None, Status.PENDING, REVIEWED),
    (Status.RECEIVED, Status.EXECUTING, READ),
    (Status.RECEIVED, Status.FAILED, READ),
    (Status.PENDING, Status.APPROVED, REVIEWED),
    (Status.PENDING, Status.REJECTED, REVIEWED),
    (Status.PENDING, Status.EXPIRED, REVIEWED),
    (Status.PENDING, Status.CANCELLED, REVIEWED),
    (Status.APPROVED, Status.EXECUTING, REVIEWED),
    (Status.APPROVED, Status.FAILED, REVIEWED),
    (Status.APPROVED, Status.UNKNOWN, WRITE),
    (Status.EXECUTING, Status.SUCCEEDED, ANY_RISK),
    (Status.EXECUTING, Status.FAILED, ANY_RISK),
    (Status.EXECUTING, Status.UNKNOWN, REVIEWED),
    (Status.UNKNOWN, Status.SUCCEEDED, REVIEWED),
    (Status.UNKNOWN, Status.FAILED, REVIEWED),
    (Status.UNKNOWN, Status.APPROVED, WRITE),
    (Status.FAILED, Status.APPROVED, WRITE),
)
_ALLOWED = frozenset((source, target, risk) for source, target, risks in MOVES for risk in risks)


class InvalidTransition(Exception):
    def __init__(self, current: str | None, target: str):
        super().__init__(f"a call cannot go from {current or 'nothing'} to {target}")
        self.current = current
        self.target = target


def allowed(current: str | None, target: str, *, risk: str) -> bool:
    return (current, target, risk) in _ALLOWED


def require(current: str | None, target: str, *, risk: str) -> None:
    """Refuse a move the table does not allow for a call of ``risk``."""
    if not allowed(current, target, risk=risk):
        raise InvalidTransition(current, target)


def sources(target: str, *, risk: str) -> tuple[str, ...]:
    """Every stored status from which a call of ``risk`` may move to ``target``."""
    return tuple(sorted(s for s, t, r in _ALLOWED if t == target and r == risk and s is not None))


def claim_source(risk: str) -> str:
    """The one status a call of ``risk`` is claimed for execution from."""
    (source,) = sources(Status.EXECUTING, risk=risk)
    return source


def change(
    call: ToolCall,
    target: str,
    *,
    fence: int | None = None,
    bump_fence: bool = False,
    **fields: Any,
) -> bool:
    """Write ``call``'s new status ``target`` (and ``fields``): the one door.

    A call not stored yet is INSERTed with its first status. A stored one is moved by one
    compare-and-set UPDATE: ``WHERE id = <call> AND status IN (<every status the table
    lets a call of its risk leave for target>)``, plus ``AND fence = <fence>`` when the
    caller holds a claim. ``bump_fence`` moves the fence on in the same statement, so
    whoever held the old one can no longer write. Zero rows matched (another process moved
    the call first, or the caller's fence is stale) writes nothing and returns False.

    On success the in-memory ``call`` takes the new values and the status-changed hooks run
    (webhooks, long-poll wake-ups), inside the caller's transaction.
    """
    return _write(call, target, fence=fence, bump_fence=bump_fence, held=False, fields=fields)


def move(
    call: ToolCall,
    target: str,
    *,
    fence: int | None = None,
    bump_fence: bool = False,
    **fields: Any,
) -> None:
    """``change`` for a move that has to match: a new call, one the caller holds locked
    (``lock_call``), or a claim's fenced finish, which misses only when the claim went
    stale. The UPDATE goes to the database with the transaction's next statement or its
    COMMIT (``sql.move_call_later``), one round trip fewer; if it matches nothing, that
    fails the transaction, and the error says so (``not_moved``). For a locked call that
    means the lock was not held: a bug worth stopping for. The in-memory call and the hooks
    are as after ``change``: a call whose move failed shows a move that never happened, so
    read it again before using it."""
    _write(call, target, fence=fence, bump_fence=bump_fence, held=True, fields=fields)


def not_moved(exc: BaseException, call: ToolCall) -> bool:
    """Whether ``exc`` (raised by a transaction that ``move``d ``call``) is that move matching
    nothing: the transaction wrote nothing."""
    return sql.not_moved(exc, call.pk)


def _write(
    call: ToolCall,
    target: str,
    *,
    fence: int | None,
    bump_fence: bool,
    held: bool,
    fields: dict[str, Any],
) -> bool:
    previous = None if call._state.adding else call.status
    require(previous, target, risk=call.risk)
    if bump_fence and fence is None:
        raise ValueError("bump_fence needs the fence being moved on")
    now = timezone.now()
    values = {"status": target, **fields, "updated_at": now}
    if previous is None:
        for name, value in values.items():
            setattr(call, name, value)
        sql.insert_call(call)
    else:
        leaving = sources(target, risk=call.risk)
        if held:
            sql.move_call_later(
                call.pk, values, sources=leaving, fence=fence, bump_fence=bump_fence
            )
        elif not sql.move_call(
            call.pk, values, sources=leaving, fence=fence, bump_fence=bump_fence
        ):
            return False
        for name, value in values.items():
            setattr(call, name, value)
        if bump_fence:
            call.fence = fence + 1  # type: ignore[operator]
    hooks.status_changed(call, previous)
    return True


def lock_call(
    call_id: UUID,
    *,
    skip_locked: bool = False,
    hold_agent: bool = False,
    hold_tool: bool = False,
    **filters: Any,
) -> ToolCall | None:
    """The call, locked until the transaction ends (its row only: calls of one tool or agent
    never wait on each other), with its tool and its agent and the agent's owner; None if
    no call matches ``filters``.

    Every service that decides on a call's status reads it through here, then checks, then
    moves it; any number of concurrent requests and workers queue on the row. The sweeps
    pass ``skip_locked``: a call another transaction holds is then None, left for their
    next pass. That transaction may belong to a process that is paused (or cut off from
    the database) for as long as it likes; a sweep waiting for it would hold up every
    sweep after it. Without filters or ``skip_locked`` (the claim of every executed call,
    most decisions) it is one statement written by hand (``sql.lock_call``).

    ``hold_agent`` takes the run lock of the call's agent first (``sql.hold_agent_running_for``,
    as every claim does), in the same round trip as the row lock when it can; with
    ``skip_locked``, a run lock a stop holds or waits for is None too.

    ``hold_tool`` (with ``skip_locked``, for the quorum sweep) holds the row of the call's
    tool first (``sql.try_hold_tool_for``), in the same round trip as the row lock when it
    can: a change of the tool or of its grants holding it makes the call None too.
    """
    if hold_tool and not skip_locked:
        raise ValueError("hold_tool waits for nothing: pass skip_locked too")
    if hold_tool and not filters and not hold_agent and connection.vendor == "postgresql":
        if not connection.in_atomic_block:
            raise TransactionManagementError("lock_call needs a transaction to hold the lock")
        # Tool first, then call, as a verdict takes them; neither waits, so a call locked
        # here while its tool is held elsewhere is let go with the sweep's transaction.
        held, call = db.together(
            sql.try_hold_tool_statement(call_id),
            sql.lock_call_statement(call_id, skip_locked=True),
        )
        return call if held else None
    if hold_tool and not sql.try_hold_tool_for(call_id):
        return None
    if not filters and not skip_locked and connection.vendor == "postgresql":
        if not connection.in_atomic_block:  # as select_for_update() refuses
            raise TransactionManagementError("lock_call needs a transaction to hold the lock")
        if hold_agent:
            _, call = db.together(
                sql.hold_agent_running_statement(call_id), sql.lock_call_statement(call_id)
            )
            return call
        return sql.lock_call(call_id)
    if hold_agent:
        if not skip_locked:
            sql.hold_agent_running_for(call_id)
        elif not sql.try_hold_agent_running_for(call_id):
            # A stop of the agent holds the run lock, or waits for it behind a claim that
            # may be paused: waiting for it would hold up the sweep as a held row would.
            return None
    return (
        ToolCall.objects.select_for_update(of=("self",), skip_locked=skip_locked)
        .select_related("tool__upstream", "agent__owner")
        .filter(pk=call_id, **filters)
        .first()
    )
