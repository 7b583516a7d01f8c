"""A reviewer's day in a real browser: Playwright driving Debian's headless Chromium against
the live server. Screenshots of the queue and the call page land in test-artifacts/."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support.browser import ARTIFACTS

pytestmark = pytest.mark.browser


def rows(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("#queue tbody tr")


def test_a_reviewer_filters_decides_and_watches_the_queue_update(
    live_server, live_world: World, page: Page, settings
) -> None:
    settings.APPROVALS_QUEUE_POLL_SECONDS = 1
    world = live_world
    delete_tool = world.tools["delete_customer"]
    delete_tool.approvals_required = 1
    delete_tool.save()
    email = make_call(world, "send_email", reasoning="The customer asked for a confirmation.")
    refund = make_call(world, "issue_refund")
    delete = make_call(world, "delete_customer")
    hostile = make_call(
        world,
        "update_customer",
        reasoning='<img src=x onerror="document.title=1"><b hx-get="/logout/" hx-trigger="load">x</b>',
    )
    ARTIFACTS.mkdir(exist_ok=True)

    # Sign in; a reviewer lands on the queue.
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "bob")
    page.fill("#id_password", "pw-bob")
    page.click("button[type=submit]")
    page.wait_for_url("**/approvals/")
    expect(rows(page)).to_have_count(4)
    expect(page.locator(".risk-tab[data-risk=destructive] .count")).to_have_text("1")
    page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=True)

    # Filter without a reload; the filter lands in the URL.
    page.select_option("select[name=risk]", "destructive")
    page.wait_for_url("**risk=destructive**")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-call-id", str(delete.pk))
    page.select_option("select[name=risk]", "")
    page.select_option("select[name=tool]", "send_email")
    page.wait_for_url("**tool=send_email**")
    expect(rows(page)).to_have_count(1)

    # Open it with the keyboard and approve the write with "a".
    page.keyboard.press("j")
    expect(rows(page).first).to_have_class("selected")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/approvals/{email.pk}/")
    expect(page.locator(".preview")).to_contain_text("Sends an e-mail to")
    page.screenshot(path=str(ARTIFACTS / "detail.png"), full_page=True)
    page.keyboard.press("a")
    expect(page.locator("#call-status")).to_have_text("Approved")
    assert ToolCall.objects.get(pk=email.pk).status == Status.APPROVED

    # The destructive call: approve stays disabled until the record it erases is typed.
    page.goto(f"{live_server.url}/approvals/{delete.pk}/")
    approve = page.locator("#decision-form button[value=approve]")
    expect(approve).to_be_disabled()
    page.keyboard.press("a")  # goes to the confirmation field
    expect(page.locator("#id_confirmation")).to_be_focused()
    page.keyboard.type("cus_000")
    expect(approve).to_be_disabled()
    page.keyboard.type("3")
    expect(approve).to_be_enabled()
    page.screenshot(path=str(ARTIFACTS / "detail-destructive.png"), full_page=True)
    approve.click()
    expect(page.locator("#call-status")).to_have_text("Approved")
    assert ToolCall.objects.get(pk=delete.pk).status == Status.APPROVED

    # The agent's HTML stayed text in the browser too.
    page.goto(f"{live_server.url}/approvals/{hostile.pk}/")
    expect(page.locator(".reasoning")).to_contain_text('<img src=x onerror="document.title=1">')
    assert page.locator(".reasoning img, .reasoning b").count() == 0

    # The queue follows what happens elsewhere without a reload.
    page.goto(f"{live_server.url}/approvals/")
    expect(rows(page)).to_have_count(2)
    page.evaluate("window.stillTheSamePage = true")
    newcomer = make_call(world, "send_email", session_id="run-9")
    decide(call_id=refund.pk, reviewer=world.bob, verdict="reject", comment="Duplicate.")
    expect(page.locator(f'#queue tr[data-call-id="{newcomer.pk}"]')).to_have_count(
        1, timeout=10_000
    )
    expect(page.locator(f'#queue tr[data-call-id="{refund.pk}"]')).to_have_count(0)
    assert page.evaluate("window.stillTheSamePage") is True
    page.screenshot(path=str(ARTIFACTS / "queue-updated.png"), full_page=True)
