"""Corrections racing each other and plain approvals, with real threads and connections
against PostgreSQL: one correction wins, and no approval of arguments the call no longer
has ever counts towards its quorum."""

from __future__ import annotations

import json

from django.contrib.auth.models import User
from django.test import Client

from approvals.models import Decision, Status, ToolCall
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
