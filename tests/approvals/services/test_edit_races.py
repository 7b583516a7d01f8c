"""Corrections racing each other and plain approvals, with real threads and connections
against PostgreSQL: one correction wins, and no approval of arguments the call no longer
has ever counts towards its quorum."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from approvals.models import Decision, Note, Status, ToolCall
from approvals.services import notes
from audit.models import AuditEvent
from tests.approvals.conftest import make_call
from tests.approvals.services.test_decision_races import at_once, decide_through_the_web
from tests.conftest import World
from tests.support.workers import purge_queue
from tools_registry import services as registry_services

ROUNDS = 6
EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}


def test_concurrent_corrections_and_approvals_keep_the_quorum_bound(live_world: World) -> None:
    world = live_world
    registry_services.update_policy(
        tool=world.tools["send_email"], changes={"approvals_required": 2}, changed_by=world.alice
    )
    world.tools["send_email"].refresh_from_db()
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave")
    registry_services.grant_review(tool=world.tools["send_email"], user=dave)
    bob_client, dave_client = Client(), Client()
    bob_client.force_login(world.bob)
    dave_client.force_login(dave)
    purge_queue()
    try:
        # 1. Two corrections at once: one is made, the other refused; one approval counts.
        for _ in range(ROUNDS):
            call = make_call(world, "send_email", arguments=EMAIL)
            corrections = [{**EMAIL, "subject": "From bob"}, {**EMAIL, "subject": "From dave"}]
            at_once(
                decide_through_the_web(
                    bob_client, call, "approve", edited_arguments=json.dumps(corrections[0])
                ),
                decide_through_the_web(
                    dave_client, call, "approve", edited_arguments=json.dumps(corrections[1])
                ),
            )
            call.refresh_from_db()
            assert call.status == Status.PENDING
            assert call.arguments in corrections
            edited = AuditEvent.objects.filter(call_id=call.pk, action="call.arguments_edited")
            assert edited.count() == 1
            (decision,) = Decision.objects.filter(call=call)
            assert decision.edited and decision.arguments_hash == call.arguments_hash

        # 2. A correction against a plain approval of the agent's arguments: whichever order
        # the lock gives them, the plain approval never counts for the corrected call.
        for _ in range(ROUNDS):
            call = make_call(world, "send_email", arguments=EMAIL)
            at_once(
                decide_through_the_web(bob_client, call, "approve"),
                decide_through_the_web(
                    dave_client,
                    call,
                    "approve",
                    edited_arguments=json.dumps({**EMAIL, "subject": "Corrected"}),
                ),
            )
            call = ToolCall.objects.get(pk=call.pk)
            assert call.status == Status.PENDING
            assert call.arguments["subject"] == "Corrected"
            counting = Decision.objects.filter(call=call, arguments_hash=call.arguments_hash)
            assert [d.reviewer.username for d in counting] == ["dave"]
    finally:
        purge_queue()


def test_a_note_written_while_a_correction_replaces_the_value_it_quotes_is_masked(
    live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A note quoting a hidden value, still being written when a correction replaces that
    value: the correction masks the quotes in the notes it reads, and read before the note
    was committed, it missed this one, kept in clear once nothing held the value to mask it
    by. The note now waits for the call's row, as the correction does: one goes first."""
    world = live_world
    tool = registry_services.update_policy(
        tool=world.tools["update_customer"],
        changes={
            "sensitive_fields": [*world.tools["update_customer"].sensitive_fields, "changes.name"]
        },
        changed_by=world.alice,
    )
    world.tools["update_customer"] = tool
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world, "update_customer", arguments={"customer_id": "cus_0001", "changes": {"name": name}}
    )
    # The note's transaction is held open after its INSERT, until the correction has had
    # its chance to go first.
    written, go_on = threading.Event(), threading.Event()
    note_added = notes.events.note_added

    def note_added_then_wait(*args: object, **kwargs: object) -> None:
        note_added(*args, **kwargs)  # type: ignore[arg-type]
        written.set()
        assert go_on.wait(10)

    monkeypatch.setattr(notes.events, "note_added", note_added_then_wait)
    bob = Client()
    bob.force_login(world.bob)

    def write_note() -> object:
        try:
            return notes.add_note(call_id=call.pk, author=world.bob, text=f"It is {name}.")
        finally:
            connections.close_all()

    def correct() -> object:
        try:
            return decide_through_the_web(
                bob,
                call,
                "approve",
                edited_arguments=json.dumps(
                    {"customer_id": "cus_0001", "changes": {"name": "Zeb Quixote"}}
                ),
            )()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(2) as pool:
        noting = pool.submit(write_note)
        assert written.wait(10)
        correcting = pool.submit(correct)
        correcting_done = wait([correcting], timeout=1.5).done
        go_on.set()
        noting.result(timeout=20)
        response = correcting.result(timeout=20)
    assert response.status_code == 200, response.content.decode()[-2000:]  # type: ignore[attr-defined]
    call.refresh_from_db()
    assert call.arguments["changes"]["name"] == "Zeb Quixote"
    (stored,) = Note.objects.filter(call=call).values_list("text", flat=True)
    assert name not in stored, stored
    assert stored.startswith("It is [masked:field:")
    assert not correcting_done, "the correction went ahead of a note still being written"
