"""The call's page: everything a reviewer needs to decide, masked, never cached."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from approvals.services.notes import add_note
from tests.approvals.conftest import login, make_call
from tests.conftest import World
from tools_registry import services as registry_services

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def test_it_shows_what_the_reviewer_needs_to_decide(world: World, dave, bob_client) -> None:
    earlier = make_call(world, "send_email", session_id="run-7")
    ToolCall.objects.filter(pk=earlier.pk).update(status=Status.SUCCEEDED)
    tool = world.tools["issue_refund"]
    tool.approvals_required = 2
    tool.save()
    call = make_call(
        world,
        "issue_refund",
        session_id="run-7",
        on_behalf_of="grace",
        reasoning="The customer was charged twice for March.",
        token_cost={"input_tokens": 1200, "output_tokens": 85, "usd": 0.0123},
    )
    decide(call_id=call.pk, reviewer=dave, verdict="approve")

    response = bob_client.get(f"/approvals/{call.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    for expected in (
        "issue_refund",
        tool.description,
        'class="risk risk-write"',
        "Refunds 12.00 USD of payment pay_0001.",  # the handler's preview
        "&quot;amount_cents&quot;: 1200",  # arguments, pretty-printed
        "The customer was charged twice for March.",
        "1200 in / 85 out",
        "$0.0123",
        "support-bot",  # agent
        "alice",  # its owner
        "grace",  # on behalf of
        "run-7",
        "data-countdown",
        "1 of 2 approvals",
        "<strong>dave</strong>",  # votes so far
        "1 h",  # policy: time to live
    ):
        assert expected in body, expected
    history = body[body.index("Earlier in this session") :]
    assert "send_email" in history and "Succeeded" in history
    assert 'hx-history="false"' in body
    assert "no-store" in response["Cache-Control"]


def test_sensitive_fields_and_detected_secrets_are_masked(world: World, bob_client) -> None:
    call = make_call(
        world,
        "update_customer",
        arguments={
            "customer_id": "cus_0001",
            "changes": {"email": "ada.l@example.com", "phone": "+44 20 7946 0001", "plan": "pro"},
        },
    )
    body = bob_client.get(f"/approvals/{call.pk}/").content.decode()
    arguments = body[body.index('<pre class="arguments">') :]
    arguments = arguments[: arguments.index("</pre>")]
    assert "ada.l@example.com" not in body
    # Anywhere but in a timestamp, whose microseconds may hold those digits by chance.
    assert "7946" not in re.sub(r"<time\b[^>]*>.*?</time>", "", body, flags=re.S)
    # What a reviewer needs, and no more: the address's domain, the phone's last digits.
    assert "&quot;email&quot;: &quot;a***@example.com&quot;" in arguments
    assert "&quot;phone&quot;: &quot;•••01&quot;" in arguments
    assert "&quot;plan&quot;: &quot;pro&quot;" in arguments
    # Without a reveal grant there is no reveal form, only the reason why.
    assert 'name="reason"' not in body
    assert "needs a reveal grant" in body


def test_a_decided_call_shows_its_masked_result_and_a_way_to_the_next_call(
    world: World, bob_client
) -> None:
    call = make_call(world, "update_customer")
    nxt = make_call(world, "send_email")
    ToolCall.objects.filter(pk=call.pk).update(
        status=Status.SUCCEEDED,
        result={"customer": {"email": "ada.l@example.com", "plan": "pro"}, "changed": ["email"]},
    )
    body = bob_client.get(f"/approvals/{call.pk}/").content.decode()
    assert "Result" in body and "&quot;changed&quot;" in body
    assert "ada.l@example.com" not in body
    assert 'name="verdict"' not in body
    response = bob_client.get(f"/approvals/next/?after={call.pk}")
    assert response["Location"] == f"/approvals/{nxt.pk}/"


def test_next_skips_calls_already_voted_on_and_ends_at_the_queue(
    world: World, dave, bob_client
) -> None:
    now = timezone.now()
    first = make_call(world, created_at=now - timedelta(minutes=3))
    voted = make_call(world, "delete_customer", created_at=now - timedelta(minutes=2))
    last = make_call(world, created_at=now - timedelta(minutes=1))
    decide(
        call_id=voted.pk,
        reviewer=world.bob,
        verdict="approve",
        confirmation="cus_0003",
        authenticated_at=now,
    )
    assert bob_client.get("/approvals/next/")["Location"] == f"/approvals/{first.pk}/"
    assert (
        bob_client.get(f"/approvals/next/?after={first.pk}")["Location"] == f"/approvals/{last.pk}/"
    )
    # Wraps round to the oldest one still waiting.
    assert (
        bob_client.get(f"/approvals/next/?after={last.pk}")["Location"] == f"/approvals/{first.pk}/"
    )
    ToolCall.objects.filter(pk__in=[first.pk, last.pk]).update(status=Status.EXPIRED)
    assert bob_client.get(f"/approvals/next/?after={last.pk}")["Location"] == "/approvals/"
    assert bob_client.get("/approvals/next/?after=junk")["Location"] == "/approvals/"


def test_next_after_a_call_of_a_tool_not_granted_starts_from_the_oldest(world: World) -> None:
    """``after`` is a position in the reviewer's own queue: a call of a tool they may not
    review (an id from a mail, from before a grant was taken away) tells nothing, not even
    that it exists or when it came."""
    now = timezone.now()
    erin = User.objects.create_user("erin", "erin@example.com", "pw-erin")
    registry_services.grant_review(tool=world.tools["send_email"], user=erin)
    first = make_call(world, "send_email", created_at=now - timedelta(minutes=3))
    hidden = make_call(world, "issue_refund", created_at=now - timedelta(minutes=2))
    make_call(world, "send_email", created_at=now - timedelta(minutes=1))
    client = login(erin)
    assert client.get(f"/approvals/next/?after={hidden.pk}")["Location"] == (
        f"/approvals/{first.pk}/"
    )


def test_an_outsider_gets_403_and_a_stranger_404(world: World) -> None:
    call = make_call(world)
    assert login(world.charlie).get(f"/approvals/{call.pk}/").status_code == 403
    missing = "00000000-0000-4000-8000-000000000000"
    assert login(world.bob).get(f"/approvals/{missing}/").status_code == 404


def test_the_owner_and_the_person_acted_for_see_no_approve_button(world: World) -> None:
    from tools_registry import services as registry_services

    registry_services.grant_review(tool=world.tools["send_email"], user=world.alice)
    registry_services.grant_review(tool=world.tools["send_email"], user=world.charlie)
    call = make_call(world, on_behalf_of="charlie@example.com")
    for person, reason in (
        (world.alice, "You own the agent"),
        (world.charlie, "acts on your behalf"),
    ):
        body = login(person).get(f"/approvals/{call.pk}/").content.decode()
        assert reason in body
        assert 'value="approve"' not in body
        assert 'value="reject"' in body
    assert 'value="approve"' in login(world.bob).get(f"/approvals/{call.pk}/").content.decode()


def test_it_says_how_the_end_user_was_established_and_in_which_roles(
    world: World, bob_client
) -> None:
    """A name an agent made up must not read like a user the identity provider vouched for."""
    named = make_call(world, on_behalf_of="grace", end_user_source="named")
    asserted = make_call(
        world,
        on_behalf_of="ada",
        end_user_roles=("support", "<b>admin</b>"),
        end_user_source="asserted",
    )
    verified = make_call(
        world, on_behalf_of="lin", end_user_roles=("viewer",), end_user_source="verified"
    )
    nobody = make_call(world)

    def facts(call: ToolCall) -> str:
        body = bob_client.get(f"/approvals/{call.pk}/").content.decode()
        return body[body.index('id="side-facts"') : body.index('id="policy"')]

    shown = facts(named)
    assert "named by the agent; nothing verifies it" in shown
    assert "Roles" not in shown
    shown = facts(asserted)
    assert "asserted by the agent" in shown
    assert (
        '<dd id="end-user-roles">support, &lt;b&gt;admin&lt;/b&gt; <span class="tag">asserted'
        in shown
    )
    shown = facts(verified)
    assert "verified: the user&#x27;s token from the identity provider" in shown
    assert '<dd id="end-user-roles">viewer <span class="tag">verified' in shown
    assert 'id="end-user-source"' not in facts(nobody)
    # The queue row says it too, in a word.
    queue = bob_client.get("/approvals/").content.decode()
    for call, word in ((named, "unverified"), (asserted, "asserted"), (verified, "verified")):
        row = queue[queue.index(f'data-call-id="{call.pk}"') :]
        row = row[: row.index("</tr>")]
        assert f"for {call.on_behalf_of} " in row and f">{word}</span>" in row, word


def test_a_destructive_call_asks_for_the_tool_name_or_a_fresh_sign_in(world: World) -> None:
    from approvals import reauth

    call = make_call(world, "delete_customer")
    client = login(world.bob)
    body = client.get(f"/approvals/{call.pk}/").content.decode()
    assert 'data-confirm-for="cus_0003"' in body
    assert 'value="approve"' in body

    session = client.session
    session[reauth.SESSION_KEY] = (timezone.now() - timedelta(hours=1)).timestamp()
    session.save()
    body = client.get(f"/approvals/{call.pk}/").content.decode()
    assert 'id="reauth-needed"' in body
    assert re.search(r'href="/approvals/reauthenticate/\?next=/approvals/[0-9a-f-]+/"', body)
    assert 'value="approve"' not in body
    assert 'value="reject"' in body


def test_the_session_history_keeps_other_tools_calls_private(world: World) -> None:
    """A reviewer of refunds only learns that the agent made other calls, not which."""
    refunds_only = User.objects.create_user("erin", "erin@example.com", "pw")
    registry_services.grant_review(tool=world.tools["issue_refund"], user=refunds_only)
    make_call(world, "delete_customer", session_id="run-9")
    call = make_call(world, "issue_refund", session_id="run-9")
    body = login(refunds_only).get(f"/approvals/{call.pk}/").content.decode()
    history = body[body.index("Earlier in this session") :]
    assert "a call of a tool you do not review" in history
    assert "delete_customer" not in history


def test_a_correction_leads_an_earlier_approver_back_to_the_call(
    world: World, dave, bob_client, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """A correction resets the approvals given before it: their reviewers must vote again.
    "Next call", the queue's "voted" tag and the reminders still counted them as voted on
    any arguments, so nobody led them back and the call waited for a reviewer."""
    tool = world.tools["send_email"]
    tool.approvals_required = 2
    tool.reminder_after_seconds = 60
    tool.save()
    call = make_call(world, created_at=timezone.now() - timedelta(minutes=5))
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve")
    assert bob_client.get("/approvals/next/")["Location"] == "/approvals/"
    edited = dict(call.arguments, subject="Your refund (corrected)")
    decide(call_id=call.pk, reviewer=dave, verdict="approve", edited_arguments=edited)
    assert bob_client.get("/approvals/next/")["Location"] == f"/approvals/{call.pk}/"
    queue = bob_client.get("/approvals/").content.decode()
    assert '<span class="tag">voted</span>' not in queue
    assert (
        login(dave).get("/approvals/").content.decode().count('<span class="tag">voted</span>') == 1
    )

    from approvals import notifications

    with django_capture_on_commit_callbacks(execute=True):
        assert notifications.send_reminders() == 1
    assert sorted(a for m in mailoutbox for a in m.to) == ["bob@example.com"]


def test_the_page_and_its_update_cost_the_same_queries_however_many_notes_it_shows(
    world: World, bob_client
) -> None:
    """Each note names its author: read with the notes (and the notes once), not a query
    per note, on the page and on the fragment that replaces its live parts."""
    call = make_call(world, "send_email")
    page, update = f"/approvals/{call.pk}/", f"/approvals/{call.pk}/live/?v=old"

    def write_notes(count: int) -> None:
        for _ in range(count):
            author = User.objects.create_user(f"reviewer-{uuid.uuid4().hex[:8]}")
            registry_services.grant_review(tool=world.tools["send_email"], user=author)
            add_note(call_id=call.pk, author=author, text="Asked the customer to confirm.")

    def queries(url: str) -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            body = bob_client.get(url, HTTP_HX_REQUEST="true").content.decode()
        return len(captured.captured_queries), body

    write_notes(1)
    queries(page)  # warm-up: the first request of a session touches it
    few = queries(page)[0], queries(update)[0]
    write_notes(8)
    (on_page, body), (on_update, fragment) = queries(page), queries(update)

    for shown in (body, fragment):
        assert shown.count("Asked the customer to confirm.") == 9
    assert (on_page, on_update) == few, f"1 note: {few}, 9 notes: {(on_page, on_update)}"


def test_the_page_and_its_update_cost_the_same_queries_however_many_approvals_it_shows(
    world: World, bob_client
) -> None:
    """Whether each approval still stands (its reviewer may still give it) was asked of each
    reviewer in turn: two queries more per approval on the page and on each live update."""
    tool = world.tools["send_email"]
    tool.approvals_required = 9
    tool.save()
    call = make_call(world, "send_email")
    page, update = f"/approvals/{call.pk}/", f"/approvals/{call.pk}/live/?v=old"

    def approve(count: int) -> list[User]:
        approvers = []
        for _ in range(count):
            approver = User.objects.create_user(f"reviewer-{uuid.uuid4().hex[:8]}")
            registry_services.grant_review(tool=tool, user=approver)
            decide(call_id=call.pk, reviewer=approver, verdict="approve")
            approvers.append(approver)
        return approvers

    def queries(url: str) -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            body = bob_client.get(url, HTTP_HX_REQUEST="true").content.decode()
        return len(captured.captured_queries), body

    approve(1)
    queries(page)  # warm-up: the first request of a session touches it
    few = queries(page)[0], queries(update)[0]
    gone = approve(7)[0]
    registry_services.revoke_review(tool=tool, user=gone)
    (on_page, body), (on_update, fragment) = queries(page), queries(update)

    for shown in (body, fragment):
        assert "7 of 9 approvals" in shown
        assert shown.count("no longer counts") == 1
        assert f"no longer counts: {gone.username} may not approve" in shown
    assert (on_page, on_update) == few, f"1 approval: {few}, 8: {(on_page, on_update)}"
