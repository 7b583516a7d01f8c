"""The keyboard and the mouse in Chromium: a verdict in flight keeps its buttons waiting for
the answer, so a second click or a held key cannot send a second verdict; Enter on a focused
link opens that link, not the row the shortcuts selected."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from approvals.models import Decision, Note
from approvals.services.decisions import decide
from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support.browser import sign_in
from tests.support.calls import second_reviewer

pytestmark = pytest.mark.browser


def test_the_decision_buttons_wait_while_a_verdict_is_in_flight(
    live_server: Any, live_world: World, page: Page
) -> None:
    world = live_world
    world.tools["send_email"].approvals_required = 2
    world.tools["send_email"].save()
    call = make_call(world, "send_email")
    sign_in(page, live_server.url, "bob", "pw-bob")
    page.goto(f"{live_server.url}/approvals/{call.pk}/")
    held: list[Route] = []
    page.route(f"**/approvals/{call.pk}/decide/", lambda route: held.append(route))

    page.fill("#id_comment", "Checked the order history.")
    approve = page.locator("#decision-form button[value=approve]")
    approve.click()
    page.wait_for_timeout(200)
    assert len(held) == 1
    expect(approve).to_be_disabled()
    expect(page.locator("#decision-form button[value=reject]")).to_be_disabled()
    page.locator("body").press("a")
    page.locator("body").press("a")
    page.wait_for_timeout(200)
    held[0].continue_()
    expect(page.locator("#approved-already")).to_be_visible()
    page.wait_for_timeout(500)
    for late in held[1:]:
        late.continue_()
    page.wait_for_timeout(500)
    assert len(held) == 1, len(held)
    expect(page.locator("#refusal")).to_have_count(0)
    assert Decision.objects.filter(call=call).count() == 1


def test_enter_on_a_focused_link_in_the_queue_opens_that_call_not_the_selected_row(
    live_server: Any, live_world: World, page: Page
) -> None:
    """Bob selects the first row with `j`, then tabs to another call's link and presses
    Enter: the Enter shortcut opened the selected row instead of the link he was on."""
    world = live_world
    make_call(world, "send_email")
    make_call(world, "issue_refund")
    sign_in(page, live_server.url, "bob", "pw-bob")
    page.keyboard.press("j")
    rows = page.locator("#queue tbody tr")
    expect(rows.first).to_have_class("selected")
    other = rows.nth(1)
    other_id = other.get_attribute("data-call-id")
    other.locator("a").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/approvals/{other_id}/")


def test_enter_in_the_standing_condition_does_not_approve_the_call(
    live_server: Any, live_world: World, page: Page
) -> None:
    """Bob types a condition for a standing approval and presses Enter, as one does at the
    end of a line: the browser pressed the form's first button, approving the call and
    granting the standing approval before he chose how long or how many."""
    call = make_call(live_world, "send_email")
    sign_in(page, live_server.url, "bob", "pw-bob")
    page.goto(f"{live_server.url}/approvals/{call.pk}/")
    page.locator("details.standing summary").click()
    page.fill("#id_standing_condition", 'args.to == "ada@example.com"')
    page.press("#id_standing_condition", "Enter")
    page.wait_for_timeout(1000)
    expect(page.locator("#call-status")).to_have_text("Pending approval")
    assert not Decision.objects.filter(call=call).exists()
    page.locator("#decision-form button[value=approve]").click()
    expect(page.locator("#call-status")).to_have_text("Approved")


def test_the_queue_refresh_leaves_the_keyboard_on_the_link_it_was_on(
    live_server: Any, live_world: World, page: Page, settings: Any
) -> None:
    """Bob tabs down the queue to the second call's link: the rows' refresh replaced the
    table every few seconds, and his focus fell back to the top of the page each time."""
    settings.APPROVALS_QUEUE_POLL_SECONDS = 1
    make_call(live_world, "send_email")
    second = make_call(live_world, "issue_refund")
    sign_in(page, live_server.url, "bob", "pw-bob")
    page.locator(f"#queue tr[data-call-id='{second.pk}'] a").first.focus()
    with page.expect_response(lambda r: "since=" in r.url):
        pass
    page.wait_for_timeout(300)
    focused = page.evaluate("document.activeElement.getAttribute('href')")
    assert focused == f"/approvals/{second.pk}/"
    # The shortcuts' help, shown over the page, goes as any overlay does: with Escape.
    page.keyboard.press("?")
    expect(page.locator("#shortcut-help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#shortcut-help")).to_be_hidden()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/approvals/{second.pk}/")


def test_a_refused_verdict_puts_the_keyboard_on_the_field_to_fix(
    live_server: Any, live_world: World, page: Page
) -> None:
    """Bob approves a correction that is not JSON, then presses Reject with no reason: each
    refusal replaced the panel and his focus with it (Tab went back to the page's top), and
    nothing tied the refusal to the field it was about. And the rejection was refused for
    the half-typed correction left in its box, which a rejection does not send."""
    call = make_call(live_world, "send_email")
    sign_in(page, live_server.url, "bob", "pw-bob")
    page.goto(f"{live_server.url}/approvals/{call.pk}/")

    page.locator("details.edit summary").click()
    page.fill("#id_edited_arguments", '{"to": "ada@example.com",')
    page.locator("#decision-form button[value=approve]").click()
    edit = page.locator("#id_edited_arguments")
    expect(edit).to_be_focused()
    expect(edit).to_have_value('{"to": "ada@example.com",')
    expect(edit).to_have_attribute("aria-invalid", "true")
    # Said beside the field, inside the correction box, not at the top of the panel.
    expect(page.locator("details.edit #refusal")).to_contain_text("not valid JSON")

    page.locator("#decision-form button[value=reject]").focus()
    page.keyboard.press("Enter")
    comment = page.locator("#id_comment")
    expect(comment).to_be_focused()
    expect(comment).to_have_attribute("aria-invalid", "true")
    expect(comment).to_have_accessible_description(
        "Say why you reject the call; the agent reads it."
    )
    expect(edit).not_to_have_attribute("aria-invalid", "true")
    comment.fill("Wrong recipient.")
    comment.press("Control+Enter")
    expect(page.locator("#call-status")).to_have_text("Rejected")
    assert Decision.objects.get(call=call).comment == "Wrong recipient."


def test_a_refused_standing_approval_keeps_its_terms(
    live_server: Any, live_world: World, page: Page
) -> None:
    """Bob asks for later calls matching a condition that does not compile: the refusal
    came back with the standing approval box closed and emptied, his condition lost."""
    call = make_call(live_world, "send_email")
    sign_in(page, live_server.url, "bob", "pw-bob")
    page.goto(f"{live_server.url}/approvals/{call.pk}/")
    page.locator("details.standing summary").click()
    page.select_option("#id_standing", "condition")
    page.fill("#id_standing_condition", 'args.to == "ada@example.com" &&')
    page.select_option("select[name=standing_hours]", "24")
    page.fill("input[name=standing_uses]", "5")
    page.locator("#decision-form button[value=approve]").click()
    expect(page.locator("#refusal")).to_be_visible()
    expect(page.locator("details.standing")).to_have_attribute("open", "")
    expect(page.locator("#id_standing")).to_have_value("condition")
    expect(page.locator("#id_standing_condition")).to_have_value('args.to == "ada@example.com" &&')
    expect(page.locator("#id_standing_condition")).to_be_focused()
    expect(page.locator("select[name=standing_hours]")).to_have_value("24")
    expect(page.locator("input[name=standing_uses]")).to_have_value("5")
    assert not Decision.objects.filter(call=call).exists()


def test_a_comment_typed_while_another_reviewer_decides_stays_under_the_keyboard(
    live_server: Any, live_world: World, page: Page, settings: Any
) -> None:
    """Bob is typing his comment when dora rejects the call: the refresh turned his form into
    the note form (keeping his words) but left the focus on nothing, and the letters he
    went on typing were shortcuts: "n" opened the next call, his note never sent."""
    settings.APPROVALS_DETAIL_POLL_SECONDS = 1
    call = make_call(live_world, "send_email")
    page_url = f"{live_server.url}/approvals/{call.pk}/"
    sign_in(page, live_server.url, "bob", "pw-bob")
    page.goto(page_url)
    page.locator("#id_comment").press_sequentially("Looks fine")
    decide(call_id=call.pk, reviewer=second_reviewer(live_world), verdict="reject", comment="No.")
    expect(page.locator("#call-status")).to_have_text("Rejected", timeout=5_000)
    expect(page.locator("#id_note")).to_be_focused()
    page.keyboard.type(" to me, and now a note")
    expect(page.locator("#id_note")).to_have_value("Looks fine to me, and now a note")
    page.locator("#note-form button").click()
    expect(page.locator("#votes")).to_contain_text("Looks fine to me, and now a note")
    assert page.url == page_url
    assert Note.objects.filter(call=call).count() == 1
