"""Analytics: charts as Charts.css tables read from the sealer's summary, and the
chain-verification panel."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.core.cache import cache, caches
from django.core.management import call_command
from django.test import Client, override_settings

from approvals.models import ToolCall
from approvals.services.decisions import decide
from audit import chain
from audit.views.analytics import WINDOWS
from tests.audit.test_timelines import EMAIL
from tests.conftest import World
from tests.support.calls import unknown_call
from tests.support.workers import purge_queue

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_charts_kept() -> None:
    """The charts are kept a minute (``CHART_CACHE_SECONDS``): another test of this process
    that opened the page (the permission or bad-parameter tests) left charts of its own."""
    cache.delete_many([f"audit:analytics:{days}" for days in WINDOWS])


def test_the_page_charts_calls_votes_and_cost_without_any_script(
    world: World, auditor_client: Client
) -> None:
    purge_queue()
    api = world.api()
    first = ToolCall.objects.get(pk=api.submit(EMAIL).json()["id"])
    second = ToolCall.objects.get(pk=api.submit(EMAIL).json()["id"])
    decide(call_id=first.pk, reviewer=world.bob, verdict="approve")
    decide(call_id=second.pk, reviewer=world.bob, verdict="reject", comment="no")
    purge_queue()
    chain.seal_pending()  # the charts count sealed events
    response = auditor_client.get("/audit/analytics/")
    content = response.content.decode()
    assert response.status_code == 200
    assert content.count('<table class="charts-css') == 5  # nothing ran: no results chart
    assert "send_email: 2 on" in content  # calls per tool per day
    assert "2 votes · 50% approved" in content  # votes per tool and per reviewer
    assert "2,400 tokens · $0.10" in content  # token cost per agent
    assert "median" in content  # approval latency
    # CSP: no inline script or style anywhere; colours and lengths come from classes.
    assert not re.search(r"<script(?![^>]*\bsrc=)", content)
    assert " style=" not in content and "<style" not in content


def test_unsealed_events_are_counted_once_sealed(world: World, auditor_client: Client) -> None:
    purge_queue()
    world.api().submit(EMAIL)
    content = auditor_client.get("/audit/analytics/").content.decode()
    assert "No calls in this window." in content
    assert "more wait for the sealer" in content
    chain.seal_pending()
    cache.clear()
    assert "send_email: 1 on" in auditor_client.get("/audit/analytics/").content.decode()


def test_the_status_panel_shows_the_last_verification_and_the_anchor(
    world: World, auditor_client: Client
) -> None:
    content = auditor_client.get("/audit/analytics/").content.decode()
    assert "never</span>" in content and "none yet" in content
    chain.seal_and_anchor()
    call_command("verify_audit", "--record", stdout=open("/dev/null", "w"))  # noqa: SIM115, PTH123
    content = auditor_client.get("/audit/analytics/").content.decode()
    assert 'badge-ok">ok</span>' in content
    assert 'badge-ok">matches</span>' in content


def test_the_charts_are_cached_for_a_minute_but_the_chain_panel_is_live(
    world: World, auditor_client: Client
) -> None:
    auditor_client.get("/audit/analytics/")
    world.api().submit(EMAIL)
    chain.seal_pending()
    content = auditor_client.get("/audit/analytics/").content.decode()
    assert "send_email: 1 on" not in content  # the cached charts
    assert "Waiting to be sealed</dt><dd>0" in content


def test_a_run_whose_worker_went_silent_is_an_unknown_result(
    world: World, auditor_client: Client
) -> None:
    # The worker claimed the write and was never heard of again: the lease sweep made its
    # outcome unknown (call.lease_expired), and no call.execution_finished will ever come.
    unknown_call(world)
    chain.seal_pending()
    content = auditor_client.get("/audit/analytics/").content.decode()
    assert "1 runs · 0 failed · 1 unknown" in content
    chain.rebuild_rollups()  # a rebuild from the trail counts it the same
    cache.clear()
    content = auditor_client.get("/audit/analytics/").content.decode()
    assert "1 runs · 0 failed · 1 unknown" in content


@pytest.mark.parametrize("seq", ["1e400", "-1e400"])
def test_an_anchor_line_with_an_endless_seq_reads_as_damaged(
    auditor_client: Client, anchor_path, seq: str
) -> None:
    """A damaged (or tampered) anchor file is shown as damaged on the panel, never a 500:
    Python reads 1e400 as infinity, which int() refuses with an OverflowError."""
    anchor_path.write_text(f'{{"seq": {seq}, "hash": "{"0" * 64}", "at": "x"}}\n')
    response = auditor_client.get("/audit/analytics/")
    assert response.status_code == 200
    assert 'badge-bad">damaged</span>' in response.content.decode()


def test_the_page_is_shown_while_the_caches_redis_is_down(
    world: World, auditor_client: Client
) -> None:
    """The charts are kept in the cache (Redis): while it was down the page was a 500."""
    down = {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    with override_settings(CACHES={"default": down}):
        caches.close_all()
        try:
            response = auditor_client.get("/audit/analytics/")
        finally:
            caches.close_all()
    assert response.status_code == 200
    assert "Calls per tool per day" in response.content.decode()
