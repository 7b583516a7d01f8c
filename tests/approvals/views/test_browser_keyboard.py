"""The keyboard and the mouse in Chromium: a verdict in flight keeps its buttons waiting for
the answer, so a second click or a held key cannot send a second verdict; Enter on a focused
link opens that link, not the row the shortcuts selected."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from approvals.models import Decision
from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support.browser import sign_in

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
