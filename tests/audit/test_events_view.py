"""/audit/: filters kept in the URL, keyset pagination, escaping."""

from __future__ import annotations

import html
import json
import re
import sys
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from approvals.services.decisions import decide
from audit import chain
from audit.log import record
from audit.masking import mask_text
from audit.models import AuditEvent
from tests.approvals.conftest import make_call
from tests.audit.test_exports import download
from tests.conftest import World

pytestmark = pytest.mark.django_db


def ids_on(response) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-event="(\d+)"', response.content.decode())]


@pytest.fixture
def trail() -> dict[str, object]:
    call_id = uuid.uuid4()
    record(action="call.submitted", outcome="pending", session_id="s-1", data={"n": 1})
    record(action="call.decision", outcome="reject", session_id="s-1", data={"n": 2})
    record(action="call.submitted", outcome="pending", session_id="ada@example.com", data={"n": 3})
    target = AuditEvent.objects.create(
        action="call.execution_finished", outcome="unknown", actor_type="system",
        actor_label="countersign", agent_name="support-bot", tool_name="issue_refund",
        session_id="s-2", call_id=call_id, data={},
    )  # fmt: skip
    return {"call_id": call_id, "target": target}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("action=call.submitted", 2),
        ("outcome=reject", 1),
        ("tool=issue_refund", 1),
        ("agent=support-bot", 1),
        ("actor=countersign&session=s-1", 2),
        ("session=s-1", 2),
        ("session=ada@example.com", 1),  # masked when stored; the filter masks its input too
        ("action=call.submitted&session=s-1", 1),
        ("start=2000-01-01&end=2999-01-01&actor=countersign&outcome=pending", 2),
        ("start=2999-01-01", 0),
    ],
)
def test_each_filter_narrows_the_trail(auditor_client: Client, trail, query, expected) -> None:
    response = auditor_client.get(f"/audit/?{query}")
    assert response.status_code == 200
    assert len(ids_on(response)) == expected


def test_the_call_filter_finds_the_calls_events(auditor_client: Client, trail) -> None:
    response = auditor_client.get(f"/audit/?call={trail['call_id']}")
    assert ids_on(response) == [trail["target"].pk]


def test_a_malformed_filter_says_so_and_matches_nothing(auditor_client: Client, trail) -> None:
    response = auditor_client.get("/audit/?call=not-a-uuid&start=yesterday")
    content = response.content.decode()
    assert "call: not a call id" in content and "start: use an ISO date-time in UTC" in content
    assert ids_on(response) == []


def test_pages_follow_each_other_without_gaps_and_keep_the_filters(
    auditor_client: Client, monkeypatch
) -> None:
    monkeypatch.setattr(sys.modules["audit.views.events"], "PAGE_SIZE", 4)
    for n in range(11):
        record(action="test.page", outcome="ok", data={"n": n})
    record(action="test.other", data={})
    seen: list[int] = []
    url = "/audit/?action=test.page&outcome=ok"
    while url:
        response = auditor_client.get(url)
        seen += ids_on(response)
        match = re.search(r'href="\?([^"]+)" rel="next"', response.content.decode())
        if match:
            next_query = match.group(1).replace("&amp;", "&")
            assert "action=test.page" in next_query and "outcome=ok" in next_query
            url = f"/audit/?{next_query}"
        else:
            url = ""
    expected = list(
        AuditEvent.objects.filter(action="test.page").order_by("-id").values_list("id", flat=True)
    )
    assert seen == expected


def test_sealed_after_a_seq_shows_only_what_was_sealed_since(auditor_client: Client) -> None:
    record(action="test.before", data={})
    chain.seal_pending()
    head, _ = chain.chain_head()
    since = [record(action="test.since", data={"n": n}).pk for n in range(2)]
    chain.seal_pending()
    record(action="test.unsealed", data={})
    response = auditor_client.get(f"/audit/?after_seq={head}")
    assert ids_on(response) == since[::-1], "newest first, nothing unsealed"
    assert f"export.jsonl?after_seq={head}" in response.content.decode()
    refused = auditor_client.get("/audit/?after_seq=12a")
    assert ids_on(refused) == [] and "after_seq: a seq" in refused.content.decode()


def test_agent_supplied_text_is_escaped(auditor_client: Client) -> None:
    record(action="call.refused", session_id="<script>alert(1)</script>", data={})
    content = auditor_client.get("/audit/").content.decode()
    assert "<script>alert(1)" not in content
    assert "&lt;script&gt;" in content


def test_an_htmx_request_gets_only_the_results(auditor_client: Client, trail) -> None:
    response = auditor_client.get("/audit/?outcome=reject", HTTP_HX_REQUEST="true")
    content = response.content.decode()
    assert content.lstrip().startswith('<div id="results">')
    assert "<html" not in content


def test_session_values_are_matched_in_their_masked_form() -> None:
    assert mask_text("ada@example.com").startswith("[masked:email:")


def test_the_list_has_a_details_column_iso_inputs_and_hides_seeding_noise(
    world: World, auditor_client: Client
) -> None:
    call = make_call(world, "send_email")
    decide(call_id=call.pk, reviewer=world.bob, verdict="reject", comment="Wrong customer.")
    record(action="grant.added", data={"user": "bob", "permission": "review_tool"})

    page = auditor_client.get("/audit/").content.decode()
    assert '<main id="main" class="wide">' in page
    assert "<th>Details</th>" in page
    assert '<span class="muted">comment:</span> Wrong customer.' in page
    assert 'name="start" type="text"' in page and 'type="datetime-local"' not in page
    assert "grant.added" in page

    quiet = auditor_client.get("/audit/?hide_access=1").content.decode()
    assert "<td>grant.added</td>" not in quiet and "<td>call.decision</td>" in quiet
    calls_only = auditor_client.get("/audit/?kind=calls").content.decode()
    assert "<td>grant.added</td>" not in calls_only and "<td>call.submitted</td>" in calls_only
    access = auditor_client.get("/audit/?kind=access").content.decode()
    assert "<td>grant.added</td>" in access and "<td>call.submitted</td>" not in access
    assert "kind: one of" in auditor_client.get("/audit/?kind=nope").content.decode()


@pytest.mark.parametrize("action", ["auth.team_deleted", "auth.user_deleted"])
def test_a_deleted_team_or_account_is_a_change_of_teams_and_grants_not_a_sign_in(
    auditor_client: Client, action: str
) -> None:
    """Its grants of tools go with it: an auditor who asks for grants, teams and permissions
    must see it (it was listed among the sign-ins)."""
    record(action=action, data={"grants": [{"tool": "issue_refund", "permission": "review"}]})
    access = auditor_client.get("/audit/?kind=access").content.decode()
    assert f"<td>{action}</td>" in access
    sign_ins = auditor_client.get("/audit/?kind=sign_in").content.decode()
    assert f"<td>{action}</td>" not in sign_ins


def test_iso_utc_times_with_a_z_filter(world: World, auditor_client: Client) -> None:
    record(action="test.iso", data={})
    today = timezone.now().date().isoformat()
    assert (
        "<td>test.iso</td>" in auditor_client.get(f"/audit/?start={today}T00:00Z").content.decode()
    )
    assert (
        "<td>test.iso</td>"
        not in auditor_client.get(f"/audit/?end={today}T00:00:00Z").content.decode()
    )


def test_a_date_with_a_z_that_the_form_takes_is_its_midnight_in_utc(
    world: World, auditor_client: Client
) -> None:
    """The From and Until fields' pattern lets a date alone end in Z through; the server
    refused it as no ISO date-time in UTC, the page and the export alike."""
    event = record(action="test.today", data={})
    today = timezone.now().date()
    page = auditor_client.get("/audit/").content.decode()
    pattern = html.unescape(re.search(r'id="f-start" [^>]*pattern="([^"]+)"', page).group(1))
    assert re.fullmatch(pattern, f"{today}Z")
    day = f"action=test.today&start={today}Z&end={today + timedelta(days=1)}Z"
    response = auditor_client.get(f"/audit/?{day}")
    assert response.context["problems"] == []
    assert ids_on(response) == [event.pk]
    exported = download(auditor_client, "jsonl", day).splitlines()
    assert [json.loads(line)["id"] for line in exported] == [event.pk]
    assert ids_on(auditor_client.get(f"/audit/?action=test.today&end={today}Z")) == []


def test_one_date_for_both_ends_is_refused_saying_the_end_is_excluded(
    world: World, auditor_client: Client
) -> None:
    """The end is excluded, a date alone meaning its midnight (daily exports from one date
    to the next neither miss nor repeat an event): one date in both fields showed an empty
    trail, as if nothing had happened that day. It is refused, saying how to ask for a day."""
    event = record(action="test.today", data={})
    today = timezone.now().date()
    same = f"action=test.today&start={today}&end={today}"
    page = auditor_client.get(f"/audit/?{same}").content.decode()
    assert "for one day, end on the next" in page
    day = f"action=test.today&start={today}&end={today + timedelta(days=1)}"
    assert ids_on(auditor_client.get(f"/audit/?{day}")) == [event.pk]
    exported = download(auditor_client, "jsonl", day).splitlines()
    assert [json.loads(line)["id"] for line in exported] == [event.pk]
    assert ids_on(auditor_client.get(f"/audit/?action=test.today&end={today}")) == []


def test_a_start_after_the_end_is_refused_not_an_empty_trail(
    world: World, auditor_client: Client
) -> None:
    record(action="test.today", data={})
    query = "start=2026-12-01T10:00&end=2026-12-01T09:00"
    page = auditor_client.get(f"/audit/?{query}")
    assert page.status_code == 200
    assert "start: must be before end" in page.content.decode()
    export = auditor_client.get(f"/audit/export.csv?{query}")
    assert export.status_code == 400
    assert b"start: must be before end" in export.content
