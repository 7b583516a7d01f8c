"""The one door for a call's status: it makes every move the table allows and refuses every
move it forbids, in Python and in the compare-and-set SQL it runs on PostgreSQL; it fences
stale holders; it tells the hooks once per change; and nothing else writes ``status``."""

from __future__ import annotations

import ast
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, transaction

from approvals import hooks, transitions
from approvals.models import Status, ToolCall
from approvals.services.calls import create_call
from audit.log import record
from audit.models import AuditEvent
from tests.conftest import World
from tests.support import ROOT
from tests.test_layers import product_modules
from tools_registry.policy import Risk

# Its hundreds of cases share one world (tests.conftest.module_world): each rolls back.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]

TOOL_OF_RISK = {
    Risk.READ: "search_docs",
    Risk.WRITE: "send_email",
    Risk.DESTRUCTIVE: "delete_customer",
}
ARGUMENTS = {
    "search_docs": {"query": "refund"},
    "send_email": {"to": "ada@example.com", "subject": "Hello", "body": "Hi."},
    "delete_customer": {"customer_id": "cus_0003", "reason": "Asked to be forgotten."},
}
ALLOWED = sorted(
    (source, target, risk)
    for source, target, risks in transitions.MOVES
    for risk in risks
    if source is not None
)
FORBIDDEN = sorted(
    (source, target, risk)
    for source in Status.values
    for target in Status.values
    for risk in Risk.values
    if not transitions.allowed(source, target, risk=risk)
)


def stored_call(world: World, risk: str, status: str) -> ToolCall:
    """A call of ``risk`` sitting in ``status`` (set up behind the door's back, as a fixture)."""
    tool = world.tools[TOOL_OF_RISK[risk]]
    call = create_call(
        agent=world.agent,
        tool=tool,
        arguments=ARGUMENTS[tool.name],
        session_id="door",
        request_key=uuid.uuid4().hex,
    )
    ToolCall.objects.filter(pk=call.pk).update(status=status, fence=3)
    return transitions.lock_call(call.pk) or call


def stored_status(call: ToolCall) -> str:
    return ToolCall.objects.values_list("status", flat=True).get(pk=call.pk)


@pytest.fixture
def heard() -> Iterator[list[tuple[str, str | None]]]:
    changes: list[tuple[str, str | None]] = []

    def listen(call: ToolCall, previous: str | None) -> None:
        changes.append((call.status, previous))

    hooks.on_status_changed(listen)
    yield changes
    hooks._status_changed.remove(listen)


def test_the_table_is_the_documented_lifecycle() -> None:
    assert len(ALLOWED) + len(FORBIDDEN) == len(Status.values) ** 2 * len(Risk.values)
    assert transitions.claim_source(Risk.READ) == Status.RECEIVED
    assert transitions.claim_source(Risk.WRITE) == Status.APPROVED
    # Re-runs are for writes only; a destructive call runs once.
    assert transitions.allowed(Status.FAILED, Status.APPROVED, risk=Risk.WRITE)
    assert not transitions.allowed(Status.FAILED, Status.APPROVED, risk=Risk.DESTRUCTIVE)
    assert not transitions.allowed(Status.UNKNOWN, Status.APPROVED, risk=Risk.DESTRUCTIVE)
    # Reads never wait for a person.
    assert not transitions.allowed(None, Status.PENDING, risk=Risk.READ)
    assert not transitions.allowed(Status.EXECUTING, Status.UNKNOWN, risk=Risk.READ)


@pytest.mark.parametrize(("source", "target", "risk"), ALLOWED)
def test_the_door_makes_every_allowed_move(
    world: World, heard: list[tuple[str, str | None]], source: str, target: str, risk: str
) -> None:
    call = stored_call(world, risk, source)
    heard.clear()
    assert transitions.change(call, target, fence=3) is True
    assert stored_status(call) == target == call.status
    assert heard == [(target, source)], "the hooks hear each change once"


@pytest.mark.parametrize(("source", "target", "risk"), FORBIDDEN)
def test_the_door_refuses_every_forbidden_move(
    world: World, heard: list[tuple[str, str | None]], source: str, target: str, risk: str
) -> None:
    call = stored_call(world, risk, source)
    heard.clear()
    with pytest.raises(transitions.InvalidTransition):
        transitions.change(call, target)
    assert stored_status(call) == source
    assert heard == []


def _fooled_cases() -> list[tuple[str, str, str, str]]:
    """(believed, stored, target, risk): the caller believes the call is in a status from
    which ``target`` is allowed, while the row is in one from which it is forbidden."""
    cases = []
    for stored, target, risk in FORBIDDEN:
        believed = next(
            (s for s in Status.values if transitions.allowed(s, target, risk=risk)), None
        )
        if believed is not None:
            cases.append((believed, stored, target, risk))
    return cases


@pytest.mark.parametrize(("believed", "stored", "target", "risk"), _fooled_cases())
def test_the_compare_and_set_refuses_what_the_table_forbids_even_when_the_caller_is_wrong(
    world: World,
    heard: list[tuple[str, str | None]],
    believed: str,
    stored: str,
    target: str,
    risk: str,
) -> None:
    """The Python check passes on a stale in-memory call; the SQL statement, built from the
    table, still matches nothing, so nothing is written and nobody is told."""
    call = stored_call(world, risk, stored)
    call.status = believed  # stale: what the caller last read
    heard.clear()
    assert transitions.change(call, target) is False
    assert stored_status(call) == stored
    assert heard == []


def test_a_new_call_is_stored_only_with_a_first_status_the_table_allows(world: World) -> None:
    for risk, status in ((Risk.READ, Status.PENDING), (Risk.WRITE, Status.RECEIVED)):
        tool = world.tools[TOOL_OF_RISK[risk]]
        call = ToolCall(
            agent=world.agent,
            tool=tool,
            tool_version=tool.version,
            risk=risk,
            arguments=ARGUMENTS[tool.name],
            arguments_hash="x" * 64,
            session_id="door",
            request_key=uuid.uuid4().hex,
        )
        with pytest.raises(transitions.InvalidTransition):
            transitions.change(call, status)
    assert not ToolCall.objects.filter(session_id="door").exists()


def test_a_stale_fence_writes_nothing_and_a_bump_moves_the_fence_on(world: World) -> None:
    call = stored_call(world, Risk.WRITE, Status.EXECUTING)
    assert transitions.change(call, Status.SUCCEEDED, fence=2) is False
    assert stored_status(call) == Status.EXECUTING
    assert transitions.change(call, Status.UNKNOWN, fence=3, bump_fence=True) is True
    assert ToolCall.objects.get(pk=call.pk).fence == 4 == call.fence
    with pytest.raises(ValueError, match="fence"):
        transitions.change(call, Status.FAILED, bump_fence=True)


def test_a_move_that_has_to_match_and_does_not_fails_its_whole_transaction(world: World) -> None:
    """``move`` sends its UPDATE with the transaction's COMMIT; one that matches nothing (a
    stale fence here) fails the transaction there, and whatever else it wrote goes too."""
    call = stored_call(world, Risk.WRITE, Status.EXECUTING)  # fence 3
    with pytest.raises(DatabaseError) as raised, transaction.atomic():
        transitions.move(call, Status.SUCCEEDED, fence=2, result={"late": True})
        record(action="test.after_the_move", call=call)
    assert transitions.not_moved(raised.value, call)
    assert not transitions.not_moved(raised.value, stored_call(world, Risk.WRITE, Status.PENDING))
    assert not transitions.not_moved(IntegrityError("another failure"), call)
    assert stored_status(call) == Status.EXECUTING
    assert not AuditEvent.objects.filter(action="test.after_the_move").exists()

    with transaction.atomic():  # read again: the failed move left the instance as if it had moved
        call = transitions.lock_call(call.pk)
        assert call is not None
        transitions.move(call, Status.SUCCEEDED, fence=3, result={"ok": True})
    stored = ToolCall.objects.get(pk=call.pk)
    assert (stored.status, stored.result) == (Status.SUCCEEDED, {"ok": True})


# --- Nothing else writes a call's status --------------------------------------------------

DOOR = {"approvals.transitions", "approvals.sql"}
STATUS_WRITERS = {"ToolCall", "update", "create", "update_or_create", "get_or_create"}


def status_writes(source: str) -> list[int]:
    """Lines that write a ``status`` field: ``x.status = ...``, ``.update(status=...)`` (or
    ``create``), ``ToolCall(status=...)``, ``save(update_fields=[..."status"...])``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_status_attribute(t) for t in targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords}
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if "status" in keywords and name in STATUS_WRITERS:
                lines.append(node.lineno)
            fields = keywords.get("update_fields")
            if isinstance(fields, ast.List | ast.Tuple) and any(
                isinstance(e, ast.Constant) and e.value == "status" for e in fields.elts
            ):
                lines.append(node.lineno)
    return lines


def _is_status_attribute(target: ast.expr) -> bool:
    """``something.status``, but not an object's own ``self.status`` (an HTTP status)."""
    return (
        isinstance(target, ast.Attribute)
        and target.attr == "status"
        and not (isinstance(target.value, ast.Name) and target.value.id == "self")
    )


def test_the_status_writes_check_finds_each_kind_of_write() -> None:
    source = (
        "call.status = 'failed'\n"
        "ToolCall.objects.filter(pk=1).update(status='failed')\n"
        "ToolCall(status='pending')\n"
        "call.save(update_fields=['status'])\n"
        "render(request, 'page.html', status=409)\n"
        "JsonResponse(body, status=202)\n"
        "self.status = 404\n"
    )
    assert status_writes(source) == [1, 2, 3, 4]


def test_no_product_code_but_the_door_writes_a_call_status() -> None:
    offenders: dict[str, Any] = {}
    for module, path in product_modules(ROOT).items():
        if module in DOOR:
            continue
        if lines := status_writes(path.read_text()):
            offenders[module] = lines
    assert offenders == {}
