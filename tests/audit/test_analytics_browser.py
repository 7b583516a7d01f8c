"""The analytics page in a real browser (Playwright, Debian's Chromium) at a desktop and a
phone width: every chart fits its panel, no label is cut off, no CSP violation. Screenshots
land in test-artifacts/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone
from playwright.sync_api import Browser, Page

from audit import chain
from audit.models import AuditEvent
from tests.audit.conftest import make_auditor
from tests.support.browser import ARTIFACTS

pytestmark = pytest.mark.browser

TOOLS = [
    "send_email",
    "issue_refund",
    "update_customer_billing_address_and_notify_the_account_owner",
    "delete_customer",
    "search_knowledge_base",
    "create_ticket",
    "close_ticket",
    "export_customer_data",
]
REVIEWERS = ["reviewer", "a.reviewer.with.a.rather.long.name@compliance.example.com"]
AGENTS = ["support-bot", "billing-assistant-with-a-long-descriptive-name"]


def seed_week() -> None:
    """A week of calls, votes and results, long names included, sealed into the summary."""
    now = timezone.now()
    events = []
    for n in range(420):
        at = now - timedelta(hours=n * 0.39)
        tool = TOOLS[n % len(TOOLS)]
        call_id = uuid.uuid4()
        agent = AGENTS[n % 2]
        events += [
            AuditEvent(
                occurred_at=at, action="call.submitted", outcome="pending", actor_type="agent",
                actor_label=agent, agent_name=agent, tool_name=tool, call_id=call_id,
                data={"token_cost": {"input_tokens": 12000 + n, "output_tokens": 900, "usd": 0.24}},
            ),
            AuditEvent(
                occurred_at=at + timedelta(seconds=40 + n * 7), action="call.decision",
                outcome="reject" if n % 5 == 0 else "approve", actor_type="user",
                actor_label=REVIEWERS[n % 2], agent_name=agent, tool_name=tool, call_id=call_id,
            ),
            AuditEvent(
                occurred_at=at + timedelta(seconds=40 + n * 7),
                action="call.rejected" if n % 5 == 0 else "call.approved",
                outcome="rejected" if n % 5 == 0 else "approved", actor_type="system",
                agent_name=agent, tool_name=tool, call_id=call_id,
            ),
            AuditEvent(
                occurred_at=at + timedelta(seconds=50 + n * 7), action="call.execution_finished",
                outcome=["succeeded", "succeeded", "failed", "unknown"][n % 4] if n % 5 else "failed",
                actor_type="system", agent_name=agent, tool_name=tool, call_id=call_id,
            ),
        ]  # fmt: skip
    AuditEvent.objects.bulk_create(events)
    chain.seal_pending()


@pytest.fixture
def auditor_page(browser: Browser, live_server) -> Iterator[tuple[Page, list[str]]]:
    make_auditor("dana")
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_server.url}/login/?next=/audit/analytics/")
    page.fill("#id_username", "dana")
    page.fill("#id_password", "pw")
    page.click("button[type=submit]")
    page.wait_for_url("**/audit/analytics/")
    yield page, errors
    context.close()


# Every visible label must show all its text inside its own box and inside the chart's panel.
CLIPPED_LABELS = """() => {
  const problems = [];
  const labels = document.querySelectorAll(
    '.panel .chart-label, .panel .chart-note, .panel ul.legend li, .chart-columns th:not(.hide-label)');
  for (const el of labels) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;
    const panel = el.closest('.panel').getBoundingClientRect();
    if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0)
      problems.push(`cut inside its box: ${el.textContent.trim()}`);
    if (box.left < panel.left - 1 || box.right > panel.right + 1)
      problems.push(`outside its panel: ${el.textContent.trim()}`);
  }
  // Nothing of a chart lies on its legend, and the legend is inside the panel.
  for (const legend of document.querySelectorAll('.panel ul.legend')) {
    const chart = legend.parentElement.querySelector('.charts-css');
    const panel = legend.closest('.panel').getBoundingClientRect(), box = legend.getBoundingClientRect();
    if (box.bottom > panel.bottom + 1) problems.push('a legend runs out of its panel');
    if (chart) {
      for (const part of chart.querySelectorAll('td, th')) {
        const r = part.getBoundingClientRect();
        if (r.height && r.bottom > box.top + 1) problems.push(`chart over its legend: ${chart.id}`);
      }
    }
  }
  for (const chart of document.querySelectorAll('.charts-css')) {
    const box = chart.getBoundingClientRect(), panel = chart.closest('.panel').getBoundingClientRect();
    if (box.right > panel.right + 1) problems.push(`chart wider than its panel: ${chart.id}`);
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth} > ${window.innerWidth}`);
  return problems;
}"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", [1440, 390])
def test_the_charts_fit_with_every_label_whole(
    auditor_page: tuple[Page, list[str]], width: int
) -> None:
    page, errors = auditor_page
    seed_week()
    cache.delete("audit:analytics:7")  # the empty page's charts, cached at sign-in
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(page.url)
    assert page.locator("table.charts-css").count() == 6
    assert "update_customer_billing_address_and_notify_the_account_owner" in page.content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"audit-analytics-{width}.png"), full_page=True)
    assert page.evaluate(CLIPPED_LABELS) == []
    assert errors == [], f"browser errors (CSP violations included): {errors}"
