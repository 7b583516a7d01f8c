"""The decide view (``approvals/views/detail.py``): the htmx panel swap, the loser of a race
shown the current state, typed confirmation and a stale sign-in through the web, POST and
CSRF only. The decision rules themselves: ``tests/approvals/services/test_decisions.py``."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals import reauth
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from approvals.services.notes import add_note
from audit.models import AuditEvent
from tests.approvals.conftest import (
    ARGUMENTS,
    login,
    make_call,
    shown_state,
    with_free_form_names,
)
from tests.conftest import World
from tools_registry import services as registry_services

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def post_decision(client, call: ToolCall, verdict: str, **fields):  # type: ignore[no-untyped-def]
    """The verdict as the call's page sends it: bound to its arguments and the state shown."""
    data = {
        "verdict": verdict,
        "comment": "",
        "arguments_hash": call.arguments_hash,
        "state_hash": shown_state(client, call),
        **fields,
    }
    return client.post(f"/approvals/{call.pk}/decide/", data, HTTP_HX_REQUEST="true")


def test_an_htmx_decision_swaps_the_panel_with_the_outcome(world: World, bob_client) -> None:
    call = make_call(world)
    response = post_decision(bob_client, call, "approve")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="decision-panel"')
    assert "Approved" in body and "Next call" in body
    assert "<html" not in body


def test_the_loser_of_a_race_sees_the_current_state_not_an_error(world: World, dave) -> None:
    call = make_call(world)
    bob, other = login(world.bob), login(dave)
    bob.get(f"/approvals/{call.pk}/")
    other.get(f"/approvals/{call.pk}/")
    post_decision(other, call, "reject", comment="Wrong customer.")
    response = post_decision(bob, call, "approve")
    body = response.content.decode()
    assert response.status_code == 200
    assert "This call is already rejected." in body
    assert "Rejected" in body and "Wrong customer." in body
    assert 'name="verdict"' not in body
    # Without htmx, the full page says the same with 409.
    full = bob.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash},
    )
    assert full.status_code == 409
    assert "already rejected" in full.content.decode()


def test_a_destructive_approval_through_the_web(world: World, bob_client) -> None:
    call = make_call(world, "delete_customer")
    refused = post_decision(bob_client, call, "approve", confirmation="delete")
    assert "Type cus_0003 to confirm" in refused.content.decode()
    ok = post_decision(bob_client, call, "approve", confirmation="cus_0003")
    assert "1 of 2 approvals" in ok.content.decode()


def test_a_stale_sign_in_is_sent_to_re_authenticate(world: World, bob_client) -> None:
    call = make_call(world, "delete_customer")
    session = bob_client.session
    session[reauth.SESSION_KEY] = (timezone.now() - timedelta(days=1)).timestamp()
    session.save()
    body = post_decision(bob_client, call, "approve", confirmation="cus_0003").content.decode()
    assert "needs a sign-in from the last 15 minutes" in body
    assert f'href="/approvals/reauthenticate/?next=/approvals/{call.pk}/"' in body
    assert call.decisions.count() == 0


def test_deciding_is_post_only_and_needs_the_csrf_token(world: World) -> None:
    from django.test import Client

    call = make_call(world)
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.bob)
    assert client.get(f"/approvals/{call.pk}/decide/").status_code == 405
    response = client.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash},
    )
    assert response.status_code == 403
    assert ToolCall.objects.get(pk=call.pk).status == Status.PENDING


def test_a_reviewer_who_approved_may_still_reject_while_the_call_waits(
    world: World, bob_client
) -> None:
    """One approval of two: the approver saw something since (a fraud alert, a customer's
    call). Their page offered no way to stop the call, only "You voted", and a rejection was
    refused as a second verdict; someone else had to be found while the call could be
    approved by the next reviewer."""
    call = make_call(world, "delete_customer")  # destructive: two approvals
    post_decision(bob_client, call, "approve", confirmation="cus_0003")
    page = bob_client.get(f"/approvals/{call.pk}/").content.decode()
    assert "You may still reject it" in page
    assert 'value="reject"' in page and 'value="approve"' not in page
    again = post_decision(bob_client, call, "approve", confirmation="cus_0003")
    assert "You already decided on these arguments." in again.content.decode()
    rejected = post_decision(bob_client, call, "reject", comment="The customer called: keep it.")
    assert rejected.status_code == 200 and "Rejected" in rejected.content.decode()
    call.refresh_from_db()
    assert call.status == Status.REJECTED
    verdicts = list(call.decisions.order_by("created_at").values_list("reviewer", "verdict"))
    assert verdicts == [(world.bob.pk, "approve"), (world.bob.pk, "reject")]
    assert [e.action for e in AuditEvent.objects.filter(call_id=call.pk).order_by("id")][-3:] == [
        "call.decision",
        "call.decision",
        "call.rejected",
    ]


def test_a_verdict_recorded_through_htmx_is_not_offered_back_as_a_note(
    world: World, bob_client
) -> None:
    """The rejection went through: the panel said "The call was decided before your
    verdict; what you typed is kept below" and held the comment in the note form, so the
    reviewer added their own reason a second time as a note."""
    call = make_call(world)
    response = post_decision(bob_client, call, "reject", comment="Wrong customer entirely.")
    body = response.content.decode()
    assert "Rejected" in body and "Wrong customer entirely." in body  # the vote, shown
    assert 'id="kept-comment-notice"' not in body
    assert re.search(r'<textarea id="id_note"[^>]*></textarea>', body)


def test_an_approvers_reject_box_starts_empty_after_approving(world: World, bob_client) -> None:
    """One approval of two, with a comment: the panel offered the rejection with the
    approval's comment already in its box, so `r` (or Ctrl+Enter) rejected the call at once
    with "Checked the record." as the reason the agent reads, and the page's poll carried it
    as a draft ("decided before your verdict") once another reviewer decided."""
    call = make_call(world, "delete_customer")  # destructive: two approvals
    response = post_decision(
        bob_client, call, "approve", comment="Checked the record.", confirmation="cus_0003"
    )
    body = response.content.decode()
    assert "1 of 2 approvals" in body and 'id="approved-already"' in body
    assert re.search(r'<textarea id="id_comment"[^>]*></textarea>', body)


def _refusal(response) -> str:  # type: ignore[no-untyped-def]
    found = re.search(r'id="refusal">(.*?)</div>', response.content.decode(), re.S)
    return found.group(1) if found else ""


def _form_as_the_browser_sends_it(page: str) -> dict[str, str]:
    """The decision form's fields as a browser posts them (the correction's textarea is
    sent whether its <details> was opened or not)."""
    form = page[page.index('<form id="decision-form"') :]
    form = form[: form.index("</form>")]
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form))
    edit = re.search(r'name="edited_arguments"[^>]*>(.*?)</textarea>', form, re.S)
    if edit:
        fields["edited_arguments"] = html.unescape(edit.group(1))
    return fields


def test_a_rejection_from_a_page_that_went_stale_after_a_correction_goes_through(
    world: World, dave
) -> None:
    """Another reviewer corrected the call while this one read it: their rejection (which
    binds to nothing, stopping harm stays easy) was refused as "a correction", since the
    page's untouched correction box still held the arguments as they were."""
    tool = world.tools["send_email"]
    tool.approvals_required = 2
    tool.save()
    call = make_call(world)
    bob = login(world.bob)
    fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    assert "edited_arguments" in fields
    decide(
        call_id=call.pk,
        reviewer=dave,
        verdict="approve",
        edited_arguments={**call.arguments, "to": "someone.else@example.com"},
    )
    response = bob.post(
        f"/approvals/{call.pk}/decide/",
        {**fields, "verdict": "reject", "comment": "Not that address."},
    )
    assert response.status_code == 302, _refusal(response)
    call.refresh_from_db()
    assert call.status == Status.REJECTED
    assert call.arguments["to"] == "someone.else@example.com"


def test_a_map_keyed_by_addresses_can_be_approved_or_rejected_as_shown(world: World) -> None:
    """A key is masked like any text (``b***@example.com``): the correction box, sent
    untouched with every verdict, was taken for a correction still holding a masked part,
    and neither an approval nor a rejection of such a call went through."""
    with_free_form_names(world)
    arguments = {**ARGUMENTS["send_email"], "names": {"bob@example.com": "Bob"}}
    for verdict, comment in (("reject", "Not to Bob."), ("approve", "")):
        call = make_call(world, arguments=arguments)
        bob = login(world.bob)
        page = bob.get(f"/approvals/{call.pk}/").content.decode()
        assert "b***@example.com" in page and "bob@example.com" not in page
        fields = _form_as_the_browser_sends_it(page)
        assert "edited_arguments" in fields
        response = bob.post(
            f"/approvals/{call.pk}/decide/", {**fields, "verdict": verdict, "comment": comment}
        )
        assert response.status_code == 302, _refusal(response)
        call.refresh_from_db()
        assert call.status != Status.PENDING
        assert call.arguments == arguments and not call.arguments_edited


def test_a_correction_elsewhere_keeps_a_map_keyed_by_addresses_as_it_was(world: World) -> None:
    with_free_form_names(world)
    arguments = {**ARGUMENTS["send_email"], "names": {"bob@example.com": "Bob"}}
    call = make_call(world, arguments=arguments)
    bob = login(world.bob)
    fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    corrected = json.loads(fields["edited_arguments"])
    corrected["subject"] = "Your refund, corrected"
    fields["edited_arguments"] = json.dumps(corrected)
    response = bob.post(f"/approvals/{call.pk}/decide/", {**fields, "verdict": "approve"})
    assert response.status_code == 302, _refusal(response)
    call.refresh_from_db()
    assert call.arguments == {**arguments, "subject": "Your refund, corrected"}


def test_after_a_refusal_for_changed_arguments_the_form_holds_them_as_they_are_now(
    world: World, dave
) -> None:
    """Refused because another reviewer corrected the call, the page asks to review it
    again; its correction box kept the arguments as they were, and the next "Approve" from
    that page (now bound to the corrected arguments) sent them back as a correction: the
    other reviewer's correction undone, unseen, as this reviewer's."""
    tool = world.tools["send_email"]
    tool.approvals_required = 2
    tool.save()
    call = make_call(world)
    bob = login(world.bob)
    fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    corrected = {**call.arguments, "subject": "Your refund (corrected)"}
    decide(call_id=call.pk, reviewer=dave, verdict="approve", edited_arguments=corrected)

    refused = bob.post(f"/approvals/{call.pk}/decide/", {**fields, "verdict": "approve"})
    assert refused.status_code == 409
    assert "review it again" in _refusal(refused)
    again = _form_as_the_browser_sends_it(refused.content.decode())
    response = bob.post(f"/approvals/{call.pk}/decide/", {**again, "verdict": "approve"})

    assert response.status_code == 302, _refusal(response)
    call.refresh_from_db()
    assert call.arguments == corrected
    assert call.status == Status.APPROVED


def test_an_htmx_refusal_for_changed_arguments_does_not_bind_the_form_to_unseen_ones(
    world: World, dave
) -> None:
    """Through htmx only the decision panel is swapped: the page still shows the arguments
    as they were. The panel came back bound to the corrected arguments' hash, so a second
    click approved arguments the reviewer was never shown. It stays bound to what the page
    shows, and says the arguments changed."""
    tool = world.tools["send_email"]
    tool.approvals_required = 2
    tool.save()
    call = make_call(world)
    bob = login(world.bob)
    fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    shown_hash = fields["arguments_hash"]
    corrected = {**call.arguments, "to": "someone.else@example.com"}
    decide(call_id=call.pk, reviewer=dave, verdict="approve", edited_arguments=corrected)

    refused = bob.post(
        f"/approvals/{call.pk}/decide/", {**fields, "verdict": "approve"}, HTTP_HX_REQUEST="true"
    )
    body = refused.content.decode()
    assert "review it again" in body
    assert "A reviewer corrected this call's arguments" in body
    again = _form_as_the_browser_sends_it(body)
    assert again["arguments_hash"] == shown_hash
    bob.post(
        f"/approvals/{call.pk}/decide/", {**again, "verdict": "approve"}, HTTP_HX_REQUEST="true"
    )
    call.refresh_from_db()
    assert call.status == Status.PENDING
    assert not call.decisions.filter(reviewer=world.bob).exists()


def test_a_half_typed_correction_does_not_stand_in_the_way_of_a_rejection(
    world: World, bob_client
) -> None:
    """The correction box is sent with every verdict: a rejection was refused because what
    it held was not JSON, though a rejection corrects nothing."""
    call = make_call(world)
    response = post_decision(
        bob_client, call, "reject", comment="Wrong recipient.", edited_arguments='{"to": '
    )
    assert response.status_code == 200
    call.refresh_from_db()
    assert call.status == Status.REJECTED
    assert call.arguments == ARGUMENTS["send_email"]


def test_a_correction_back_to_arguments_approved_before_a_correction_is_refused(
    world: World, dave, dora
) -> None:
    """Two approvals needed: dave approved a refund e-mail, bob found its text wrong and
    corrected it (dave's approval reset), and dora corrected it back. Approvals bind to the
    arguments' hash, so dave's counted again, unseen by him since, and with dora's approved
    the very text bob had corrected: one approval after the disagreement made the quorum."""
    tool = world.tools["send_email"]
    tool.approvals_required = 2
    tool.save()
    call = make_call(world)
    original = call.arguments
    dave_page = login(dave).get(f"/approvals/{call.pk}/").content.decode()
    approved = login(dave).post(
        f"/approvals/{call.pk}/decide/",
        {**_form_as_the_browser_sends_it(dave_page), "verdict": "approve"},
    )
    assert approved.status_code == 302, _refusal(approved)
    bob = login(world.bob)
    bob_fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    corrected = json.loads(bob_fields["edited_arguments"])
    corrected["body"] = "Your refund of 12.00 USD is on its way."
    bob.post(
        f"/approvals/{call.pk}/decide/",
        {**bob_fields, "verdict": "approve", "edited_arguments": json.dumps(corrected)},
    )
    call.refresh_from_db()
    assert (call.status, call.arguments["body"]) == (Status.PENDING, corrected["body"])

    dora_client = login(dora)
    fields = _form_as_the_browser_sends_it(
        dora_client.get(f"/approvals/{call.pk}/").content.decode()
    )
    back = dora_client.post(
        f"/approvals/{call.pk}/decide/",
        {**fields, "verdict": "approve", "edited_arguments": json.dumps(original)},
        HTTP_HX_REQUEST="true",
    )
    assert "approvals given to them then would count again" in _refusal(back)
    call.refresh_from_db()
    assert call.status == Status.PENDING
    assert call.arguments["body"] == corrected["body"] and call.decisions.count() == 2


def test_after_an_htmx_refusal_the_form_stays_bound_to_the_state_the_page_shows(
    world: World,
) -> None:
    """A refusal swaps only the decision panel: the table of what the call would change
    still shows the record as the page was sent, but the new panel's form was bound to the
    record as it is now. The reviewer typed the confirmation wrong (or was told the record
    changed), clicked again, and approved a change to a record they had not seen."""
    from sandbox.models import Customer

    tool = world.tools["update_customer"]
    registry_services.update_policy(
        tool=tool,
        changes={"rules": [{"when": "true", "then": "require", "approvals": 1, "confirm": True}]},
        changed_by=world.alice,
    )
    tool.refresh_from_db()
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"plan": "enterprise"}},
    )
    bob = login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    assert "Ada Lovelace" in page
    fields = _form_as_the_browser_sends_it(page)
    # Meanwhile the record changes: another customer's name now stands there.
    Customer.objects.filter(customer_id="cus_0001").update(name="Grace Hopper", plan="free")
    panels = []
    for confirmation in ("cus_0000", "cus_0001"):  # a typo first, then as asked
        panel = bob.post(
            f"/approvals/{call.pk}/decide/",
            {**fields, "verdict": "approve", "confirmation": confirmation},
            HTTP_HX_REQUEST="true",
        ).content.decode()
        panels.append(panel)
        if 'id="decision-form"' in panel:
            fields = _form_as_the_browser_sends_it(panel)
    call.refresh_from_db()
    assert call.status == Status.PENDING and call.decisions.count() == 0
    for panel in panels:
        assert 'id="current-state"' not in panel  # the page still shows Ada's record
        assert "has changed since this page showed it" in panel
    assert "has changed since you opened it" in _refusal_text(panels[-1])
    # The page's next change (a note) keeps saying so, and the poll keeps the page's state.
    registry_services.grant_review(tool=tool, user=world.charlie)
    add_note(call_id=call.pk, author=world.charlie, text="The customer called.")
    live_state = re.search(r'<span id="live-state".*?</span>', panels[-1], re.S)
    assert live_state
    polled = dict(re.findall(r'name="(\w+)" value="([^"]*)"', live_state.group(0)))
    assert polled["s"] == fields["state_hash"]
    update = bob.post(f"/approvals/{call.pk}/live/", polled, HTTP_HX_REQUEST="true")
    assert "The customer called." in update.content.decode()
    assert "has changed since this page showed it" in update.content.decode()
    # Reloaded, the page shows the record as it is, and the approval binds to that.
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    assert "Grace Hopper" in page
    done = bob.post(
        f"/approvals/{call.pk}/decide/",
        {**_form_as_the_browser_sends_it(page), "verdict": "approve", "confirmation": "cus_0001"},
        HTTP_HX_REQUEST="true",
    )
    assert "Approved" in done.content.decode()


def _refusal_text(body: str) -> str:
    found = re.search(r'id="refusal">(.*?)</div>', body, re.S)
    return found.group(1) if found else ""


def test_an_htmx_form_error_does_not_bind_the_form_to_arguments_corrected_meanwhile(
    world: World, dave
) -> None:
    """As a refusal for changed arguments, but the verdict was a form error (a correction
    that is not JSON yet): the panel came back bound to the other reviewer's corrected
    arguments, with them in its correction box, while the page still showed the old ones;
    the next click approved a recipient the reviewer was never shown."""
    tool = world.tools["send_email"]
    tool.approvals_required = 2
    tool.save()
    call = make_call(world)
    bob = login(world.bob)
    fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    shown_hash = fields["arguments_hash"]
    corrected = {**call.arguments, "to": "someone.else@example.com"}
    decide(call_id=call.pk, reviewer=dave, verdict="approve", edited_arguments=corrected)

    body = bob.post(
        f"/approvals/{call.pk}/decide/",
        {**fields, "verdict": "approve", "edited_arguments": '{"to": '},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "not valid JSON" in body
    again = _form_as_the_browser_sends_it(body)
    bob.post(
        f"/approvals/{call.pk}/decide/", {**again, "verdict": "approve"}, HTTP_HX_REQUEST="true"
    )
    call.refresh_from_db()
    assert call.status == Status.PENDING
    assert not call.decisions.filter(reviewer=world.bob).exists()
    assert again["arguments_hash"] == shown_hash
    assert "A reviewer corrected this call's arguments" in body


@pytest.mark.parametrize("sent", ["", None], ids=["emptied", "left-out"])
def test_an_approval_without_the_record_state_the_page_showed_is_refused(
    world: World, sent: str | None
) -> None:
    """The form binds an approval to the record shown beside the call (``state_hash``). A
    POST with the field emptied or left out skipped the check that the record is still the
    one shown, and the approval went through, bound to a record nobody compared."""
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"plan": "enterprise"}},
    )
    bob = login(world.bob)
    fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    assert len(fields["state_hash"]) == 64
    crafted = {**fields, "verdict": "approve"}
    if sent is None:
        del crafted["state_hash"]
    else:
        crafted["state_hash"] = sent
    response = bob.post(f"/approvals/{call.pk}/decide/", crafted)
    assert response.status_code == 409
    assert "What this call would change has changed since you opened it" in (
        response.content.decode()
    )
    # Through htmx, the panel says the same.
    panel = bob.post(f"/approvals/{call.pk}/decide/", crafted, HTTP_HX_REQUEST="true")
    assert "has changed since you opened it" in _refusal_text(panel.content.decode())
    call.refresh_from_db()
    assert call.status == Status.PENDING and call.decisions.count() == 0
    # The form as the page sent it approves.
    done = bob.post(
        f"/approvals/{call.pk}/decide/", {**fields, "verdict": "approve"}, HTTP_HX_REQUEST="true"
    )
    assert "Approved" in done.content.decode()
    assert call.decisions.get().shown_state_hash


def test_a_tool_that_shows_no_record_state_is_approved_with_the_empty_field(
    world: World,
) -> None:
    """send_email shows nothing beside the call: its page sends an empty ``state_hash``, and
    there is no state to compare it with."""
    call = make_call(world)
    bob = login(world.bob)
    fields = _form_as_the_browser_sends_it(bob.get(f"/approvals/{call.pk}/").content.decode())
    assert fields["state_hash"] == ""
    done = bob.post(
        f"/approvals/{call.pk}/decide/", {**fields, "verdict": "approve"}, HTTP_HX_REQUEST="true"
    )
    assert "Approved" in done.content.decode()
    assert call.decisions.get().shown_state_hash == ""
