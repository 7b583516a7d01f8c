"""A call's timeline and a session's timeline, from the trail."""

from __future__ import annotations

import html
import json
import re
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from approvals.execution import runner
from approvals.execution.finish import Outcome, expire_lease, finish_call
from approvals.guards import is_shown
from approvals.models import ToolCall
from approvals.services.decisions import decide
from approvals.services.reveals import reveal_arguments
from audit.log import record
from audit.masking import keyed_digest
from audit.models import AuditEvent
from audit.templatetags.audit_tags import session_url
from audit.views.timelines import SESSION_EVENT_LIMIT
from tests.approvals.conftest import make_call, with_free_form_names
from tests.conftest import World
from tests.support.calls import claimed_call
from tests.support.workers import purge_queue
from tools_registry.services.grants import grant

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]

EMAIL = {
    "tool": "send_email",
    "arguments": {"to": "ada@example.com", "subject": "Refund", "body": "On its way."},
    "session_id": "run-7",
    "reasoning": "Ada asked for a confirmation.",
    "token_cost": {"input_tokens": 1000, "output_tokens": 200, "usd": 0.05},
}


def test_a_calls_timeline_tells_proposal_vote_intent_and_result_in_order(
    world: World, auditor_client: Client
) -> None:
    purge_queue()
    call = ToolCall.objects.get(pk=world.api().submit(EMAIL).json()["id"])
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve", comment="fine")
    runner.execute(call.pk)
    purge_queue()
    content = auditor_client.get(f"/audit/calls/{call.pk}/").content.decode()
    titles = [
        "Proposal",
        "Policy",
        "Vote: approve",
        "Approved",
        "Intent (before the handler ran)",
        "Result",
    ]
    positions = [content.index(f"<strong>{t}</strong>") for t in titles]
    assert positions == sorted(positions)
    assert "[masked:email:" in content and "ada@example.com" not in content
    assert "Ada asked for a confirmation." in content
    assert "bob: approve (policy v1)" in content
    assert "<dt>Comment</dt><dd>fine</dd>" in content  # the reviewer's words, not in JSON
    assert 'id="call-status"><span class="badge status-succeeded">succeeded' in content


def test_a_pending_calls_status_is_pending_whatever_happened_last(
    world: World, auditor_client: Client
) -> None:
    purge_queue()
    call = ToolCall.objects.get(pk=world.api().submit(EMAIL).json()["id"])
    grant(tool=call.tool, permission="reveal_tool_arguments", user=world.bob)
    reveal_arguments(call_id=call.pk, reviewer=world.bob, reason="Check the address.")
    content = auditor_client.get(f"/audit/calls/{call.pk}/").content.decode()
    assert 'status-pending">pending' in content
    assert "<strong>Arguments revealed to a reviewer</strong>" in content
    assert "<dt>Reason</dt><dd>Check the address.</dd>" in content


def test_a_destructive_approval_shows_reauthentication_and_the_typed_confirmation(
    world: World, auditor_client: Client
) -> None:
    purge_queue()
    call = make_call(world, "delete_customer")
    record(action="reviewer.reauthenticated", actor=world.bob, outcome="ok")
    decide(
        call_id=call.pk,
        reviewer=world.bob,
        verdict="approve",
        confirmation="cus_0003",
        authenticated_at=timezone.now(),
    )
    purge_queue()
    content = auditor_client.get(f"/audit/calls/{call.pk}/").content.decode()
    assert content.index("<strong>Re-authenticated</strong>") < content.index(
        "<strong>Vote: approve</strong>"
    )
    assert "<dt>Typed confirmation</dt><dd>cus_0003</dd>" in content
    assert "<dt>Signed in at</dt>" in content


def test_a_reauthentication_for_another_call_stays_off_this_calls_timeline(
    world: World, auditor_client: Client
) -> None:
    """Bob re-authenticates (twice wrong, then right) to approve call B while call A
    waits; he then rejects A, which needs no sign-in. A's story has none of it."""
    purge_queue()
    first = make_call(world, "delete_customer")
    other = make_call(world, "delete_customer")
    for failures in (1, 2):
        record(
            action="reviewer.reauthentication_failed",
            actor=world.bob,
            outcome="wrong_password",
            data={"failures": failures},
        )
    record(action="reviewer.reauthenticated", actor=world.bob, outcome="ok")
    decide(
        call_id=other.pk,
        reviewer=world.bob,
        verdict="approve",
        confirmation="cus_0003",
        authenticated_at=timezone.now(),
    )
    decide(call_id=first.pk, reviewer=world.bob, verdict="reject", comment="No.")
    purge_queue()
    content = auditor_client.get(f"/audit/calls/{first.pk}/").content.decode()
    assert "<strong>Vote: reject</strong>" in content
    assert "Re-authenticat" not in content
    # The call it was for shows the sign-in and the failed attempts before it.
    content = auditor_client.get(f"/audit/calls/{other.pk}/").content.decode()
    assert content.count("<strong>Re-authentication failed</strong>") == 2
    assert content.index("<strong>Re-authenticated</strong>") < content.index(
        "<strong>Vote: approve</strong>"
    )


def test_the_auditor_sees_how_the_end_user_was_established(
    world: World, auditor_client: Client
) -> None:
    purge_queue()
    call = ToolCall.objects.get(
        pk=world.api().submit({**EMAIL, "on_behalf_of": "grace"}).json()["id"]
    )
    content = auditor_client.get(f"/audit/calls/{call.pk}/").content.decode()
    assert '<dd>grace <span class="tag" id="end-user-source">named</span></dd>' in content


def test_a_sessions_timeline_lists_its_calls_with_reasoning_and_token_cost(
    world: World, auditor_client: Client
) -> None:
    api = world.api()
    api.submit(EMAIL)
    api.submit(
        {
            **EMAIL,
            "reasoning": "And a second one.",
            "token_cost": {"input_tokens": 500, "output_tokens": 50},
        }
    )
    api.submit({**EMAIL, "session_id": "another-run"})
    content = auditor_client.get("/audit/session/?agent=support-bot&session=run-7").content.decode()
    assert "2 calls" in content
    assert "Ada asked for a confirmation." in content and "And a second one." in content
    assert "tokens 1500 in, 250 out" in content
    # Each call's status, not its last event's outcome ("sent" of a notification).
    assert content.count('status <span class="badge status-pending outcome">pending') == 2


def test_an_unknown_call_or_session_is_404(world: World, auditor_client: Client) -> None:
    assert auditor_client.get(f"/audit/calls/{uuid.uuid4()}/").status_code == 404
    assert auditor_client.get("/audit/session/?agent=support-bot&session=nope").status_code == 404


def test_an_auditor_sees_the_rule_the_signals_and_what_the_reviewer_was_shown(
    world: World, auditor_client: Client
) -> None:
    """The view a verdict was bound to is kept with it: the record before the change, as
    the reviewer saw it, masked; and the policy step names the rule and the signals."""
    from tools_registry import services as registry_services

    registry_services.update_policy(
        tool=world.tools["update_customer"],
        changes={"rules": [{"when": "has(args.changes.email)", "then": "require", "approvals": 1}]},
        changed_by=world.alice,
    )
    world.tools["update_customer"].refresh_from_db()
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"email": "ada.new@example.net"}},
    )
    bob = Client()
    bob.force_login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    assert "Customer cus_0001 (Ada Lovelace)" in page
    state_hash = page.split('name="state_hash" value="')[1].split('"')[0]
    assert len(state_hash) == 64
    bob.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash, "state_hash": state_hash},
    )
    content = auditor_client.get(f"/audit/calls/{call.pk}/").content.decode()
    assert "What the reviewer was shown: Customer cus_0001 (Ada Lovelace)" in content
    assert "ada@example.com" not in content  # the record's address, masked as stored
    assert "Rule</dt><dd>1: has(args.changes.email) → require 1" in content
    assert "new_target" in content  # the signal, with its detail
    # The hash the verdict bound to; the reviewer's page carried a keyed digest of it.
    bound = call.decisions.get().shown_state_hash
    assert is_shown(state_hash, bound) and state_hash != bound
    # The trail keeps it keyed too: an auditor compares digests, never guesses masked values.
    assert bound not in content and keyed_digest(bound) in content


def test_a_verdict_on_a_record_that_changed_meanwhile_is_refused(world: World) -> None:
    from sandbox.models import Customer

    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"plan": "enterprise"}},
    )
    bob = Client()
    bob.force_login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    state_hash = page.split('name="state_hash" value="')[1].split('"')[0]
    Customer.objects.filter(customer_id="cus_0001").update(plan="free")
    response = bob.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash, "state_hash": state_hash},
    )
    assert response.status_code == 409
    assert (
        "What this call would change has changed since you opened it" in response.content.decode()
    )
    assert ToolCall.objects.get(pk=call.pk).status == "pending"


class _Agent:
    name = "support-bot"


@pytest.mark.parametrize(
    "session",
    [
        "case " + " ".join(f"u{i}@ex.io" for i in range(10)),  # masked, it grows past 200
        " run-7",  # spaces are part of an agent's session id
        "run-8 ",
        "   ",  # and an id of spaces alone is one too
        "\t",
    ],
)
def test_every_session_opens_and_exports_from_the_trails_own_links(
    auditor_client: Client, session: str
) -> None:
    for n in range(3):
        record(action="test.event", outcome="ok", agent=_Agent(), session_id=session, data={"n": n})
    event = AuditEvent.objects.filter(agent_name="support-bot").first()
    assert event is not None
    page = auditor_client.get(session_url(event))
    assert page.status_code == 200
    link = re.search(rb'href="(/audit/export\.jsonl\?[^"]+)"', page.content)
    assert link is not None
    export = auditor_client.get(html.unescape(link.group(1).decode()))
    lines = [line for line in b"".join(export.streaming_content).splitlines() if line.strip()]
    assert len(lines) == 3
    listed = auditor_client.get("/audit/", {"session": event.session_id, "agent": "support-bot"})
    assert listed.content.count(b"test.event") >= 3


@pytest.mark.parametrize("session", ["   ", "\u00a0"])
def test_a_call_whose_session_id_is_only_white_space_links_to_its_session(
    world: World, auditor_client: Client, session: str
) -> None:
    """The API takes a session id of spaces alone (not of control characters, a tab
    among them: ``tests/gateway/test_intake_session_ids.py``); the call page's link to its
    session, and the session page's export, work for one (it was a 404)."""
    purge_queue()
    response = world.api().submit({**EMAIL, "session_id": session})
    assert response.status_code == 202
    call_id = response.json()["id"]
    purge_queue()
    page = auditor_client.get(f"/audit/calls/{call_id}/").content.decode()
    link = re.search(r'<dt>Session</dt><dd class="mono"><a href="([^"]+)"', page)
    assert link is not None
    timeline = auditor_client.get(html.unescape(link.group(1)))
    assert timeline.status_code == 200
    assert [c.call_id for c in timeline.context["calls"]] == [uuid.UUID(call_id)]
    export = re.search(rb'href="(/audit/export\.jsonl\?[^"]+)"', timeline.content)
    assert export is not None
    body = b"".join(auditor_client.get(html.unescape(export.group(1).decode())).streaming_content)
    assert {json.loads(line)["call_id"] for line in body.splitlines()} == {call_id}


@pytest.mark.parametrize(("extra", "cut"), [(0, False), (1, True)])
def test_a_session_says_it_is_cut_short_only_when_it_has_more_events_than_shown(
    auditor_client: Client, extra: int, cut: bool
) -> None:
    """A session of exactly SESSION_EVENT_LIMIT events is shown whole; it said it was cut."""
    AuditEvent.objects.bulk_create(
        AuditEvent(
            action="call.note_added",
            actor_type="system",
            agent_name="support-bot",
            session_id="long-run",
            data={"n": n},
        )
        for n in range(SESSION_EVENT_LIMIT + extra)
    )
    page = auditor_client.get("/audit/session/?agent=support-bot&session=long-run")
    assert page.status_code == 200
    assert page.context["truncated"] is cut
    assert ("Only the first events of this session are shown." in page.content.decode()) is cut
    shown = [step.event.data["n"] for call in page.context["calls"] for step in call.steps]
    assert shown == list(range(SESSION_EVENT_LIMIT))


def test_a_session_page_without_a_session_is_404(world: World, auditor_client: Client) -> None:
    assert auditor_client.get("/audit/session/?agent=support-bot&session=").status_code == 404
    assert auditor_client.get("/audit/session/?agent=support-bot").status_code == 404


@pytest.mark.parametrize(
    ("action", "outcome"),
    [
        ("call.note_added", "noted"),
        ("call.arguments_edited", "edited"),
        ("call.notification_failed", "server_down"),
    ],
)
def test_a_note_or_a_correction_does_not_read_as_the_calls_status(
    auditor_client: Client, action: str, outcome: str
) -> None:
    from types import SimpleNamespace

    call_id = uuid.uuid4()
    call = SimpleNamespace(
        pk=call_id,
        agent=SimpleNamespace(name="support-bot"),
        tool=SimpleNamespace(name="refund"),
        session_id="run-1",
    )
    record(action="call.submitted", outcome="pending", call=call, data={"reasoning": "r"})
    record(action=action, outcome=outcome, call=call, data={"note": "check"})
    assert auditor_client.get(f"/audit/calls/{call_id}/").context["status"] == "pending"
    session = auditor_client.get("/audit/session/?agent=support-bot&session=run-1")
    assert session.context["calls"][0].outcome == "pending"


def test_each_refused_call_of_a_session_is_an_entry_of_its_own(auditor_client: Client) -> None:
    """A refusal has no call id: three refusals are three attempts, not one call."""
    from types import SimpleNamespace

    agent = SimpleNamespace(name="support-bot")
    for tool, code in (("send_email", "tool_not_allowed"), ("drop_db", "unknown_tool")):
        record(
            action="call.refused",
            outcome=code,
            agent=agent,
            tool=SimpleNamespace(name=tool) if code != "unknown_tool" else None,
            session_id="run-1",
            data={"tool": tool, "code": code, "arguments": {}},
        )
    calls = auditor_client.get("/audit/session/?agent=support-bot&session=run-1").context["calls"]
    assert [(c.tool, c.outcome) for c in calls] == [
        ("send_email", "tool_not_allowed"),
        ("drop_db", "unknown_tool"),
    ]


def test_keys_that_mask_alike_are_all_in_the_trail(world: World, auditor_client: Client) -> None:
    """An address's fingerprint is taken of it in lower case, a card's or a phone's of its
    digits: "Ada@example.com" and "ada@example.com" are both "[masked:email:<same>]", and
    as keys of one map the second took the first one's place in the recorded event. The
    trail (its pages, its exports) held one entry where the call had two: an agent could
    keep an argument out of the record."""
    with_free_form_names(world)
    purge_queue()
    names = {
        "Ada@example.com": "First entry",
        "ada@example.com": "Second entry",
        "4111 1111 1111 1111": "Third entry",
        "4111-1111-1111-1111": "Fourth entry",
    }
    body = {**EMAIL, "arguments": {**EMAIL["arguments"], "names": names}}
    response = world.api().submit(body)
    assert response.status_code == 202, response.content
    call_id = response.json()["id"]
    recorded = AuditEvent.objects.get(call_id=call_id, action="call.submitted")
    assert sorted(recorded.data["arguments"]["names"].values()) == sorted(names.values())
    page = auditor_client.get(f"/audit/calls/{call_id}/").content.decode()
    for value in names.values():
        assert value in page
    assert "ada@example.com" not in page.lower() and "4111" not in page
    export = b"".join(auditor_client.get(f"/audit/export.jsonl?call={call_id}").streaming_content)
    submitted = [
        json.loads(line) for line in export.decode().splitlines() if "call.submitted" in line
    ]
    assert sorted(submitted[0]["data"]["arguments"]["names"].values()) == sorted(names.values())


def test_a_late_result_that_settled_the_call_reads_as_its_result(
    world: World, auditor_client: Client
) -> None:
    """The worker went silent past its lease, then came back with its success while the
    call was still unknown: the step after "Worker went silent" is the result that settled
    it, and the call's status is that result's."""
    call, claim = claimed_call(world)
    assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))
    finish_call(claim=claim, outcome=Outcome(status="succeeded", result={"id": 1}, latency_ms=7))

    content = auditor_client.get(f"/audit/calls/{call.pk}/").content.decode()
    titles = ["Intent (before the handler ran)", "Worker went silent", "Late result accepted"]
    positions = [content.index(f"<strong>{t}</strong>") for t in titles]
    assert positions == sorted(positions)
    assert "<dt>Latency (ms)</dt><dd>7</dd>" in content
    assert 'id="call-status"><span class="badge status-succeeded">succeeded' in content
