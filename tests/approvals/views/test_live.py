"""The call's page stays true: a live poll answers 204 while nothing changed and the parts to
replace once something did; a verdict on a page gone stale is refused with the new state and
what the reviewer typed kept; notes keep a dissent that came too late."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from approvals import display
from approvals.models import Note, Status, ToolCall
from approvals.services.decisions import decide
from approvals.views.detail import live_version
from tests.approvals.conftest import login, make_call, shown_state
from tests.conftest import World, events
from tools_registry import services as registry_services

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def version_of(body: str) -> str:
    match = re.search(
        r'id="live-state" hidden[^>]*><input type="hidden" name="v" value="([^"]+)"', body
    )
    assert match, "the page carries its live version"
    return match.group(1)


def live_state_of(body: str) -> dict[str, str]:
    """What the page sends with its next poll (its #live-state)."""
    found = re.search(r'<span id="live-state".*?</span>', body, re.S)
    assert found, "the page carries its live state"
    return dict(re.findall(r'name="(\w+)" value="([^"]*)"', found.group(0)))


def test_the_live_poll_answers_nothing_until_the_call_changes(world: World, dave: Any) -> None:
    call = make_call(world)
    bob = login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    version = version_of(page)
    live = f"/approvals/{call.pk}/live/?v={version}&h={call.arguments_hash}"
    assert bob.get(live, HTTP_HX_REQUEST="true").status_code == 204

    # Another reviewer rejects: the poll brings the new status, their vote and comment,
    # the sidebar, a panel without the decision form, and no reveal form.
    decide(call_id=call.pk, reviewer=dave, verdict="reject", comment="Wrong customer.")
    # The draft goes in the poll's body, never in its URL (access logs keep URLs).
    assert 'id="live" hx-post=' in page
    response = bob.post(live, {"comment": "I was about to approve"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body
    for part in ("live-state", "side-facts", "result-block", "decision-panel", "reveal-block"):
        assert re.search(rf'id="{part}"[^>]*hx-swap-oob="true"', body), part
    assert "Rejected" in body and "Wrong customer." in body
    assert 'name="verdict"' not in body
    # What bob was typing is kept, in the note form that replaced his decision form.
    assert "I was about to approve" in body and 'id="note-form"' in body
    # send_email shows no record beside the call: no state in its version.
    assert version_of(body) == live_version(ToolCall.objects.get(pk=call.pk), "") != version


def test_a_vote_on_a_call_still_pending_updates_votes_not_the_form(world: World, dave: Any) -> None:
    world.tools["send_email"].approvals_required = 2
    world.tools["send_email"].save()
    call = make_call(world)
    bob = login(world.bob)
    version = version_of(bob.get(f"/approvals/{call.pk}/").content.decode())
    decide(call_id=call.pk, reviewer=dave, verdict="approve", comment="Fine by me.")
    body = bob.get(
        f"/approvals/{call.pk}/live/?v={version}&h={call.arguments_hash}", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert re.search(r'id="votes"[^>]*hx-swap-oob="true"', body)
    assert re.search(r'id="status-line"[^>]*hx-swap-oob="true"', body)
    assert "1 of 2 approvals" in body and "Fine by me." in body
    # The form the reviewer may be typing in is left alone.
    assert 'id="decision-panel"' not in body


def test_a_stale_verdict_keeps_the_comment_and_it_can_be_kept_as_a_note(
    world: World, dave: Any
) -> None:
    call = make_call(world)
    bob = login(world.bob)
    bob.get(f"/approvals/{call.pk}/")
    decide(call_id=call.pk, reviewer=dave, verdict="approve")
    response = bob.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "reject",
            "comment": "The customer's account is under review; do not send.",
            "arguments_hash": call.arguments_hash,
        },
        HTTP_HX_REQUEST="true",
    )
    body = response.content.decode()
    assert "This call is already approved." in body
    assert 'id="kept-comment-notice"' in body
    assert "The customer&#x27;s account is under review; do not send." in body
    noted = bob.post(
        f"/approvals/{call.pk}/notes/",
        {"text": "The customer's account is under review; do not send."},
        HTTP_HX_REQUEST="true",
    )
    assert noted.status_code == 200
    (note,) = Note.objects.filter(call=call)
    assert note.author == world.bob
    assert "bob</strong> noted" in noted.content.decode()
    (recorded,) = events("call.note_added", call_id=call.pk)
    assert recorded.data["note"].startswith("The customer")
    assert bob.post(f"/approvals/{call.pk}/notes/", {"text": "  "}).status_code == 400
    assert Note.objects.count() == 1


def test_a_reviewer_of_other_tools_cannot_poll_or_note(world: World) -> None:
    call = make_call(world)
    charlie = login(world.charlie)
    assert charlie.get(f"/approvals/{call.pk}/live/?v=x").status_code == 403
    assert charlie.post(f"/approvals/{call.pk}/notes/", {"text": "hi"}).status_code == 403
    assert not Note.objects.exists()


def test_a_correction_through_the_web_keeps_masked_values_left_as_shown(
    world: World,
) -> None:
    """The editor shows the arguments as the reviewer sees them; a masked value left as
    shown keeps its real value, a changed one is taken as written."""
    call = make_call(
        world,
        "update_customer",
        arguments={
            "customer_id": "cus_0001",
            "changes": {"email": "ada.l@example.com", "plan": "pro"},
        },
    )
    bob = login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    assert "a***@example.com" in page and "ada.l@example.com" not in page
    edited = '{"customer_id": "cus_0001", "changes": {"email": "a***@example.com", "plan": "enterprise"}}'
    response = bob.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "state_hash": shown_state(bob, call),
            "edited_arguments": edited,
        },
    )
    assert response.status_code == 302
    call.refresh_from_db()
    assert call.arguments == {
        "customer_id": "cus_0001",
        "changes": {"email": "ada.l@example.com", "plan": "enterprise"},
    }
    assert call.arguments_edited


def test_a_changed_text_still_holding_a_masked_part_is_refused_not_sent(world: World) -> None:
    """Edited around a masked address, the text would run with "r***@example.com" in it:
    what the mask stood for cannot be known, so the correction is refused."""
    body = "Hi Ada, write to refunds.team@example.com if it has not arrived."
    call = make_call(world, arguments={"to": "ada@example.com", "subject": "Refund", "body": body})
    bob = login(world.bob)
    shown = display.arguments(call)
    assert "r***@example.com" in shown["body"]
    edited = {**shown, "body": shown["body"].replace("Hi Ada", "Hello Ada")}
    response = bob.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "edited_arguments": json.dumps(edited),
        },
    )
    assert response.status_code == 409
    assert "still holds a masked part (r***@example.com)" in response.content.decode()
    call.refresh_from_db()
    assert call.status == Status.PENDING and call.arguments["body"] == body
    # Left as shown, the same masked text keeps its real value.
    same = {**shown, "subject": "Your refund"}
    response = bob.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "edited_arguments": json.dumps(same),
        },
    )
    assert response.status_code == 302
    call.refresh_from_db()
    assert call.arguments == {"to": "ada@example.com", "subject": "Your refund", "body": body}


def test_a_masked_address_before_punctuation_is_refused_through_the_web(world: World) -> None:
    """The body's address is shown "b***@example.com." (the sentence's full stop after it);
    a reviewer who edits the text around it must not send the stand-in."""
    call = make_call(
        world,
        arguments={"to": "ada@example.com", "subject": "Hi", "body": "Write to bob@example.com."},
    )
    edited = {
        "to": "a***@example.com",
        "subject": "Hi",
        "body": "Write to b***@example.com, please.",
    }
    response = login(world.bob).post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "edited_arguments": json.dumps(edited),
        },
    )
    assert response.status_code == 409
    assert "still holds a masked part (b***@example.com)" in response.content.decode()
    call.refresh_from_db()
    assert call.status == Status.PENDING and "***" not in json.dumps(call.arguments)


@pytest.mark.parametrize(
    ("body", "shown_part", "edited_part", "left_form"),
    [
        # The full stop after an address, a bracket, a colon: not part of its masked form.
        (
            "Write to bob@example.com.",
            "b***@example.com.",
            "b***@example.com, ok.",
            "b***@example.com",
        ),
        ("(bob@example.com)", "(b***@example.com)", "b***@example.com!", "b***@example.com"),
        ("Bcc bob@example.com: yes", "b***@example.com:", "b***@example.com;", "b***@example.com"),
        # Its first letter deleted or changed, its domain changed or deleted.
        ("To bob@example.com", "b***@example.com", "***@example.com", "***@example.com"),
        ("To bob@example.com", "b***@example.com", "c***@example.com", "c***@example.com"),
        ("To bob@example.com", "b***@example.com", "b***@example.org", "b***@example.org"),
        ("To bob@example.com", "b***@example.com", "b***@", "b***@"),
        # A phone's and a card's, around them or in them.
        ("Call 020 7946 0958 (mobile).", "•••58 (mobile)", "•••58, mobile", "•••58"),
        ("Call 020 7946 0958 (mobile).", "•••58", "•••5", "•••5"),
        ("Card 4111 1111 1111 1111: refund.", "•••• 1111:", "•••• 1111!", "•••• 1111"),
        ("Card 4111 1111 1111 1111: refund.", "•••• 1111", "••••", "••••"),
    ],
)
def test_a_changed_text_keeping_any_masked_looking_part_is_refused(
    world: World, body: str, shown_part: str, edited_part: str, left_form: str
) -> None:
    """Not only the exact forms shown: whatever an edit did around or inside a masked form,
    what is left of it stands for nothing that can be known."""
    call = make_call(world, arguments={"to": "ada@example.com", "subject": "Hi", "body": body})
    shown = display.arguments(call)
    assert shown_part in shown["body"], shown["body"]
    edited = {**shown, "body": shown["body"].replace(shown_part, edited_part)}
    restored, left = display.restore_masked(edited, call)
    assert restored["to"] == "ada@example.com"  # left as shown: restored
    assert left == [left_form], restored


def test_a_hidden_fields_marker_cut_in_an_edit_is_refused(world: World) -> None:
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={"secret_fields": ["subject"]},
        changed_by=world.alice,
    )
    world.tools["send_email"].refresh_from_db()
    call = make_call(world)
    shown = display.arguments(call)
    assert shown["subject"].startswith("[masked:field:")
    edited = {**shown, "subject": f"Re: {shown['subject'][:-3]}"}  # its end cut off
    restored, left = display.restore_masked(edited, call)
    assert left == ["[masked:field:" + shown["subject"][14:-3]], restored


def test_ordinary_text_with_stars_or_a_masked_form_the_agent_wrote_is_not_refused(
    world: World,
) -> None:
    """Stars in a text ("**bold**", "5 * 3", a footnote*) are no masked form; and one the
    agent itself wrote (a text quoting a masked address) is its text, kept as it was."""
    body = "As the log says: sent to j***@example.com."
    call = make_call(world, arguments={"to": "ada@example.com", "subject": "Hi", "body": body})
    shown = display.arguments(call)
    edited = {
        **shown,
        "subject": "**Important**: 5 * 3 = 15*",
        "body": body.replace("As the log says", "As the logs say"),
    }
    restored, left = display.restore_masked(edited, call)
    assert left == []
    assert restored["to"] == "ada@example.com"
    assert restored["body"] == "As the logs say: sent to j***@example.com."


def email_call(world: World, arguments: dict[str, Any]) -> ToolCall:
    """A send_email call of the world's agent, not stored: what its page would show."""
    return ToolCall(tool=world.tools["send_email"], agent=world.agent, arguments=arguments)


def test_removing_one_of_two_recipients_whose_masks_look_alike_keeps_the_right_one(
    world: World,
) -> None:
    """Both addresses are shown "a***@example.com"; the reviewer removes the first (Ada) and
    keeps Amy's row: Amy's own address comes back, never Ada's under Amy's name."""
    call = email_call(
        world,
        {
            "recipients": [
                {"name": "Ada", "email": "ada@example.com"},
                {"name": "Amy", "email": "amy@example.com"},
            ]
        },
    )
    shown = display.arguments(call)
    assert [r["email"] for r in shown["recipients"]] == ["a***@example.com"] * 2
    restored, left = display.restore_masked({"recipients": [shown["recipients"][1]]}, call)
    assert left == [] and restored == {"recipients": [{"name": "Amy", "email": "amy@example.com"}]}

    # Amy's row changed as well: which address its mask stood for cannot be told, so the
    # correction is refused rather than guessed.
    amy = {**shown["recipients"][1], "name": "Amy Pond"}
    restored, left = display.restore_masked({"recipients": [amy]}, call)
    assert left == ["a***@example.com"], restored

    # Changed where it stood, the other row untouched: it is still Amy's.
    restored, left = display.restore_masked({"recipients": [shown["recipients"][0], amy]}, call)
    assert left == [] and restored["recipients"] == [
        {"name": "Ada", "email": "ada@example.com"},
        {"name": "Amy Pond", "email": "amy@example.com"},
    ]

    # Two addresses alike in a plain list, one removed: refused; both kept: both restored.
    call.arguments = {"recipients": ["ada@example.com", "amy@example.com"]}
    shown = display.arguments(call)
    restored, left = display.restore_masked({"recipients": shown["recipients"][1:]}, call)
    assert left == ["a***@example.com"], restored
    restored, left = display.restore_masked({**shown, "subject": "Hi"}, call)
    assert left == [] and restored["recipients"] == ["ada@example.com", "amy@example.com"]


def test_rows_whose_masks_differ_are_still_restored_after_one_is_removed(world: World) -> None:
    call = email_call(
        world,
        {
            "recipients": [
                {"name": "Ada", "email": "ada@example.com"},
                {"name": "Bob", "email": "bob@example.com"},
            ]
        },
    )
    shown = display.arguments(call)
    bob = {**shown["recipients"][1], "name": "Robert"}
    restored, left = display.restore_masked({"recipients": [bob]}, call)
    # Moved and changed, Bob's row is left masked (nothing at its new place stood for it),
    # and the correction refused; unchanged, it comes back whole wherever it stands.
    assert left == ["b***@example.com"], restored
    restored, left = display.restore_masked({"recipients": [shown["recipients"][1]]}, call)
    assert left == [] and restored == {"recipients": [{"name": "Bob", "email": "bob@example.com"}]}


def test_bad_json_in_a_correction_is_a_clear_refusal(world: World) -> None:
    call = make_call(world)
    bob = login(world.bob)
    for raw, message in (
        ("{not json", "not valid JSON"),
        ('{"to": "a\\u0000b"}', "cannot be stored"),
        ("[" * 5000 + "]" * 5000, "cannot be stored"),
        ('{"x": NaN}', "not valid JSON"),
        # A correction put before the pasted original: read as its last value, the original.
        (
            '{"subject": "Your refund of 50 EUR", "to": "ada@example.com", '
            '"subject": "Your refund", "body": "It is on its way."}',
            "name &quot;subject&quot; twice",
        ),
    ):
        response = bob.post(
            f"/approvals/{call.pk}/decide/",
            {"verdict": "approve", "arguments_hash": call.arguments_hash, "edited_arguments": raw},
            HTTP_HX_REQUEST="true",
        )
        assert response.status_code == 200
        assert message in response.content.decode(), raw[:20]
    assert ToolCall.objects.get(pk=call.pk).status == "pending"
    # Without htmx, the page itself says the form was wrong: 400, not a conflict.
    page = bob.post(f"/approvals/{call.pk}/decide/", {"verdict": "approve"})
    assert page.status_code == 400


def test_rows_shown_alike_and_edited_where_they_stood_are_told_apart_by_what_they_kept(
    world: World,
) -> None:
    """Two rows shown "a***@example.com", both edited in place: each kept a field of its own
    (a name, an amount) that the other has not, so each is its own row. Had both changed
    everything but the masked address, a swap could not be told from two edits: refused."""
    rows = [
        {"name": "Ada", "email": "ada@example.com", "cents": 1000},
        {"name": "Amy", "email": "amy@example.com", "cents": 2000},
    ]
    call = email_call(world, {"rows": rows})
    shown = display.arguments(call)["rows"]
    lowered = [{**shown[0], "cents": 500}, {**shown[1], "cents": 1500}]
    restored, left = display.restore_masked({"rows": lowered}, call)
    assert left == [] and [r["email"] for r in restored["rows"]] == [
        "ada@example.com",
        "amy@example.com",
    ]
    renamed = [{**shown[0], "name": "Ada L."}, {**shown[1], "name": "Amy P."}]
    restored, left = display.restore_masked({"rows": renamed}, call)
    assert left == [] and restored["rows"][1] == {**rows[1], "name": "Amy P."}
    # A swap, each row then given the other's amount: nothing tells them apart.
    swapped = [{**shown[1], "cents": 1000}, {**shown[0], "cents": 2000}]
    restored, left = display.restore_masked({"rows": swapped}, call)
    assert left == ["a***@example.com"], restored


def test_rows_are_told_apart_only_among_few_look_alikes(world: World) -> None:
    """Past LOOKALIKES_COMPARED rows shown alike, none is told apart by what it kept: a row
    moved among sixty would otherwise be compared with some of them only."""
    rows = [{"name": f"N{k}", "email": f"a{k}x@example.com", "cents": 1000 + k} for k in range(60)]
    rows[55] = {"name": "N0", "email": "ava@example.com", "cents": 9999}  # row 0's name
    call = email_call(world, {"rows": rows})
    shown = display.arguments(call)["rows"]
    edited = list(shown)
    edited[0], edited[55] = {**shown[55], "cents": 5000}, shown[0]  # moved, one edited
    restored, left = display.restore_masked({"rows": edited}, call)
    assert left, (restored["rows"][0], restored["rows"][55])


def test_the_notice_of_a_correction_stays_while_the_page_shows_the_old_arguments(
    world: World, dave: Any
) -> None:
    """The poll that brought the notice "A reviewer corrected this call's arguments" also
    gave the page the corrected arguments' digest as the one it shows: the next change (a
    note, a vote) took the notice away, though the page still showed the old arguments."""
    world.tools["send_email"].approvals_required = 2
    world.tools["send_email"].save()
    call = make_call(world)
    bob = login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()

    shown = live_state_of(page)
    decide(
        call_id=call.pk,
        reviewer=dave,
        verdict="approve",
        edited_arguments={**call.arguments, "to": "someone.else@example.com"},
    )
    first = bob.post(f"/approvals/{call.pk}/live/", shown, HTTP_HX_REQUEST="true")
    assert "A reviewer corrected this call's arguments" in first.content.decode()
    registry_services.grant_review(tool=world.tools["send_email"], user=world.charlie)
    from approvals.services.notes import add_note

    add_note(call_id=call.pk, author=world.charlie, text="Checked with the customer.")
    polled = live_state_of(first.content.decode())
    assert polled["h"] == shown["h"]
    second = bob.post(f"/approvals/{call.pk}/live/", polled, HTTP_HX_REQUEST="true")
    body = second.content.decode()
    assert "Checked with the customer." in body
    assert "A reviewer corrected this call's arguments" in body


def test_a_change_to_the_record_alone_brings_the_notice(world: World) -> None:
    """The record beside the call lives in the downstream system: changed there, nothing
    stored with the call changed, and the poll answered 204. The page kept showing the
    record as it was, without the notice, until something else about the call changed."""
    from sandbox.models import Customer

    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"plan": "enterprise"}},
    )
    bob = login(world.bob)
    live = f"/approvals/{call.pk}/live/"
    shown = live_state_of(bob.get(f"/approvals/{call.pk}/").content.decode())
    assert len(shown["s"]) == 64
    assert bob.post(live, shown, HTTP_HX_REQUEST="true").status_code == 204

    record = Customer.objects.filter(customer_id="cus_0001")
    before = record.values("name", "plan").get()
    record.update(name="Grace Hopper", plan="free")
    update = bob.post(live, shown, HTTP_HX_REQUEST="true")
    body = update.content.decode()
    assert update.status_code == 200
    assert re.search(r'id="stale-notice"[^>]*hx-swap-oob="true"', body)
    assert "has changed since this page showed it" in body
    assert "Grace Hopper" not in body  # the page still shows the record as it was
    # The page keeps the state it shows; until anything changes again, the poll answers
    # nothing, and the notice stays.
    polled = live_state_of(body)
    assert polled["s"] == shown["s"] and polled["v"] != shown["v"]
    assert bob.post(live, polled, HTTP_HX_REQUEST="true").status_code == 204
    # The record back as the page shows it: the notice goes.
    record.update(**before)
    back = bob.post(live, polled, HTTP_HX_REQUEST="true").content.decode()
    assert "has changed since this page showed it" not in back
