"""The reviewer-scopes page in Chromium: no CSP violation (guardian's pages had inline
styles the CSP blocked), a grant made with the pickers. Screenshot in test-artifacts/."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import Browser

from tests.conftest import World
from tests.support.browser import ARTIFACTS
from tools_registry import services
from tools_registry.permissions import can_review

pytestmark = pytest.mark.browser


def test_a_tool_admin_grants_a_team_on_the_reviewers_page(
    live_server,
    live_world: World,
    browser: Browser,
) -> None:
    User.objects.create_superuser("root", "root@example.com", "pw-root")
    team = Group.objects.get(name="reviewers")
    team.user_set.add(live_world.charlie)
    services.grant_review(tool=live_world.tools["send_email"], group=team)
    tool = live_world.tools["issue_refund"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{live_server.url}/login/?next=/admin/tools_registry/tool/{tool.pk}/reviewers/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "pw-root")
    page.click("button[type=submit]")
    page.wait_for_url("**/reviewers/")

    page.select_option("#id_subject", label="reviewers")
    page.select_option("#id_permission", value="review_tool")
    page.click("#grant-form button[type=submit]")
    page.wait_for_selector("text=reviewers may now review the calls of issue_refund.")

    assert can_review(User.objects.get(pk=live_world.charlie.pk), tool)
    charlie = page.locator("#people tr", has_text="charlie")
    assert "through reviewers" in charlie.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-tool-reviewers.png"), full_page=True)
    context.close()
    assert errors == [], f"browser errors (CSP violations included): {errors}"
