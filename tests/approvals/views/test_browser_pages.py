"""Every page a reviewer, an auditor or a tool admin opens, in Chromium, with arguments no
one would type by hand (a 3,000-character word, right-to-left text, a value 40 objects
deep), at 1280 px and, a reviewer's own pages, at 390 px: no script error or CSP
violation, no sideways scrolling, and every field and button with a name a screen reader
can read out."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from playwright.sync_api import Browser, Page

from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support.browser import horizontal_overflow, sign_in

pytestmark = pytest.mark.browser

UNBROKEN = "x" * 3000
RIGHT_TO_LEFT = "مرحبا، طلبك في الطريق. " * 40


def nested(depth: int) -> Any:
    """A value ``depth`` objects deep, with a long text at the bottom."""
    value: Any = "Deep down. " * 40
    for level in range(depth):
        value = {f"level{level}": value}
    return value


# Fields without a label, aria-label, aria-labelledby or title; buttons with no text.
NAMELESS = """() => {
  const nameless = [];
  document.querySelectorAll("input:not([type=hidden]):not([type=submit]), textarea, select").forEach((field) => {
    if (!(field.labels && field.labels.length) && !field.getAttribute("aria-label")
        && !field.getAttribute("aria-labelledby") && !field.title) {
      nameless.push(field.outerHTML.slice(0, 120));
    }
  });
  document.querySelectorAll("button, input[type=submit]").forEach((button) => {
    if (!(button.innerText || button.value || button.getAttribute("aria-label") || "").trim()) {
      nameless.push(button.outerHTML.slice(0, 120));
    }
  });
  return nameless;
}"""


def signed_in(browser: Browser, base_url: str, username: str, errors: list[str]) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def check(page: Page, base_url: str, path: str) -> None:
    response = page.goto(f"{base_url}{path}")
    assert response is not None and response.status == 200, path
    assert horizontal_overflow(page) == 0, path
    assert page.evaluate(NAMELESS) == [], path


def test_every_page_is_readable_and_quiet_with_awkward_arguments(
    live_server: Any, live_world: World, page: Page, browser: Browser
) -> None:
    world = live_world
    call = make_call(
        world,
        "send_email",
        arguments={"to": "ada@example.com", "subject": UNBROKEN, "body": RIGHT_TO_LEFT + UNBROKEN},
    )
    make_call(world, "delete_customer")
    # An id no one would type, read in the state beside the call; a long text 40 objects deep
    # (its path is printed above it).
    odd = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_" + "9" * 3000, "changes": {"note": nested(40)}},
    )
    auditor = User.objects.create_user("audrey", "audrey@example.com", "pw-audrey")
    auditor.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    User.objects.create_superuser("root", "root@example.com", "pw-root")
    tool, agent = world.tools["send_email"], world.agent
    base = live_server.url

    sign_in(page, base, "bob", "pw-bob")  # the page fixture fails the test on any error
    for path in (
        "/approvals/",
        f"/approvals/{call.pk}/",
        f"/approvals/{odd.pk}/",
        "/approvals/attention/",
        "/approvals/standing/",
        "/approvals/reauthenticate/",
        "/account/",
        "/account/two-factor/",
    ):
        check(page, base, path)
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/approvals/", f"/approvals/{call.pk}/", f"/approvals/{odd.pk}/"):
        check(page, base, path)

    errors: list[str] = []
    audit = signed_in(browser, base, "audrey", errors)
    for path in ("/audit/", f"/audit/calls/{call.pk}/", "/audit/analytics/"):
        check(audit, base, path)
    audit.context.close()

    admin = signed_in(browser, base, "root", errors)
    for path in (
        "/admin/tools_registry/tool/",
        f"/admin/tools_registry/tool/{tool.pk}/change/",
        f"/admin/tools_registry/tool/{tool.pk}/what-if/",
        f"/admin/tools_registry/tool/{tool.pk}/reviewers/",
        "/admin/tools_registry/tool/scopes/",
        f"/admin/tools_registry/agent/{agent.pk}/change/",
        f"/admin/tools_registry/agent/{agent.pk}/issue-token/",
        f"/admin/tools_registry/agent/{agent.pk}/stop/",
    ):
        check(admin, base, path)
    admin.context.close()
    assert errors == [], f"browser errors (CSP violations included): {errors}"
