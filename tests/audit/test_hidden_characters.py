"""The auditor's pages write out characters a reader cannot see, or that reorder what they
see, as the reviewers' pages do: "refund to acct 1234" with a right-to-left override in it
must not read as another account, nor two names that differ by a zero-width space as one.
The trail and its exports keep the text as written."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client

from approvals.models import ToolCall
from approvals.services.decisions import decide
from audit import chain
from audit.models import AuditEvent
from tests.audit.test_timelines import EMAIL
from tests.conftest import World
from tests.support.workers import purge_queue

pytestmark = pytest.mark.django_db

RLO, ZWSP = "\u202e", "\u200b"
# A reordered account number, and a name that reads as another one.
TURNED = f"refund to acct {RLO}4321"
LOOKALIKE = f"b{ZWSP}ob"


def assert_written_out(content: str) -> None:
    assert RLO not in content and ZWSP not in content
    assert "&lt;U+202E&gt;" in content and "&lt;U+200B&gt;" in content


def lookalike_events() -> uuid.UUID:
    """What agents, end users, reviewers and downstreams wrote, in every column and field
    the auditor's pages show, as the trail holds it."""
    call_id = uuid.uuid4()
    columns = {
        "actor_type": "user",
        "actor_label": LOOKALIKE,
        "agent_name": f"support{ZWSP}-bot",
        "tool_name": f"issue{RLO}_refund",
        "session_id": f"run{ZWSP}-1",
        "call_id": call_id,
    }
    AuditEvent.objects.create(
        action="call.submitted",
        outcome="pending",
        data={
            "arguments": {f"acc{ZWSP}ount": TURNED, "amount": f"12{RLO}00", "currency": "EUR"},
            "reasoning": TURNED,
            "on_behalf_of": LOOKALIKE,
            "end_user_roles": [f"ad{ZWSP}min"],
            "policy": {"risk": f"wr{RLO}ite", "rule": {"number": 1, "when": TURNED}},
            "signals": [{"code": "hidden_characters", "detail": TURNED}],
        },
        **columns,
    )
    AuditEvent.objects.create(
        action="call.decision",
        outcome="approve",
        data={
            "comment": TURNED,
            "shown_state": {
                "title": f"Customer {RLO}1000",
                "error": TURNED,
                "rows": [{"field": f"e{ZWSP}mail", "now": TURNED, "after": TURNED, "changes": 1}],
                "notes": [TURNED],
            },
        },
        **columns,
    )
    AuditEvent.objects.create(
        action="call.arguments_edited",
        outcome="pending",
        data={"before": {"note": TURNED}, "after": {"note": LOOKALIKE}},
        **columns,
    )
    AuditEvent.objects.create(
        action="call.rejected",
        outcome="rejected",
        data={"comment": TURNED, "reason": LOOKALIKE, "note": TURNED},
        **columns,
    )
    return call_id


def test_the_events_list_writes_hidden_characters_out(auditor_client: Client) -> None:
    lookalike_events()
    content = auditor_client.get("/audit/").content.decode()
    assert_written_out(content)
    assert "<td>b&lt;U+200B&gt;ob" in content  # the actor's column
    assert "refund to acct &lt;U+202E&gt;4321" in content  # the details column


def test_a_calls_timeline_writes_hidden_characters_out(auditor_client: Client) -> None:
    call_id = lookalike_events()
    content = auditor_client.get(f"/audit/calls/{call_id}/").content.decode()
    assert_written_out(content)
    assert "<dd>issue&lt;U+202E&gt;_refund</dd>" in content
    assert "<dt>Comment</dt><dd>refund to acct &lt;U+202E&gt;4321</dd>" in content
    assert "acc&lt;U+200B&gt;ount" in content  # a key of the arguments
    assert "<dd>b&lt;U+200B&gt;ob <span" in content  # on behalf of


def test_a_calls_timeline_from_the_api_writes_hidden_characters_out(
    world: World, auditor_client: Client
) -> None:
    purge_queue()
    # Not in the end user's id, which the API refuses (docs/end-users.md): the trail of a
    # call stored before it did is lookalike_events'.
    body = {**EMAIL, "reasoning": TURNED}
    body["arguments"] = {**EMAIL["arguments"], "subject": f"Re{ZWSP}fund"}
    call = ToolCall.objects.get(pk=world.api().submit(body).json()["id"])
    decide(call_id=call.pk, reviewer=world.bob, verdict="reject", comment=TURNED)
    purge_queue()
    content = auditor_client.get(f"/audit/calls/{call.pk}/").content.decode()
    assert_written_out(content)


def test_a_sessions_timeline_writes_hidden_characters_out(auditor_client: Client) -> None:
    lookalike_events()
    query = f"agent=support{ZWSP}-bot&session=run{ZWSP}-1"
    content = auditor_client.get(f"/audit/session/?{query}").content.decode()
    assert_written_out(content)
    assert "<strong>issue&lt;U+202E&gt;_refund</strong>" in content


def test_the_analytics_write_hidden_characters_out(auditor_client: Client) -> None:
    lookalike_events()
    chain.seal_pending()  # the charts count sealed events
    content = auditor_client.get("/audit/analytics/").content.decode()
    assert RLO not in content and ZWSP not in content
    assert "issue&lt;U+202E&gt;_refund" in content  # a tool's label
    assert "b&lt;U+200B&gt;ob" in content  # a reviewer's label


def test_the_exports_keep_the_text_as_written(auditor_client: Client) -> None:
    call_id = lookalike_events()
    export = b"".join(
        auditor_client.get(f"/audit/export.jsonl?call={call_id}").streaming_content
    ).decode()
    rows = [json.loads(line) for line in export.splitlines()]
    assert rows[0]["tool_name"] == f"issue{RLO}_refund"
    assert rows[1]["data"]["comment"] == TURNED
    csv = b"".join(auditor_client.get(f"/audit/export.csv?call={call_id}").streaming_content)
    assert TURNED.encode() in csv and LOOKALIKE.encode() in csv
