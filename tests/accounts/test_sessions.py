"""A person's session ends SESSION_MAX_AGE_SECONDS after its sign-in and SESSION_IDLE_SECONDS
after their last request; the pages' own polling is not a request of theirs. Through the
test client, with ``timezone.now`` moved on as the tests of clocks do."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent, VerificationRun
from tests.approvals.conftest import make_call
from tests.audit.conftest import make_auditor
from tests.conftest import World

HTMX = {"HTTP_HX_REQUEST": "true"}


class Clock:
    """``timezone.now``, moved on by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_now, self.ahead = timezone.now, timedelta()
        monkeypatch.setattr(timezone, "now", lambda: real_now() + self.ahead)

    def at(self, **later: float) -> None:
        """Set the clock this long after the test began."""
        self.ahead = timedelta(**later)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def ended(world: World, reason: str) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(action="auth.logout", actor_label=world.bob.username).filter(
            data__reason=reason
        )
    )


def test_the_defaults_are_a_working_day_and_half_an_hour_idle() -> None:
    assert (settings.SESSION_MAX_AGE_SECONDS, settings.SESSION_IDLE_SECONDS) == (43200, 1800)
    assert settings.SESSION_COOKIE_AGE == settings.SESSION_MAX_AGE_SECONDS


def test_a_session_idle_too_long_is_signed_out_at_its_next_request_and_audited(
    world: World, reviewer_client: Client, clock: Clock
) -> None:
    assert reviewer_client.get("/approvals/").status_code == 200

    clock.at(minutes=31)
    response = reviewer_client.get("/approvals/?tool=send_email")

    assert response.status_code == 302
    target = urlsplit(response["Location"])
    assert target.path == "/login/"
    assert parse_qs(target.query) == {"session": ["ended"], "next": ["/approvals/?tool=send_email"]}
    assert not signed_in(reviewer_client)
    assert len(ended(world, "idle")) == 1
    page = reviewer_client.get(response["Location"]).content.decode()
    assert "Your session ended" in page


def test_the_persons_requests_keep_their_session(
    world: World, reviewer_client: Client, clock: Clock
) -> None:
    for minutes in (20, 40, 60, 80):  # each well within the idle time of the one before
        clock.at(minutes=minutes)
        # A filter changed on the queue (htmx, without the polls' since) is the person too.
        assert reviewer_client.get("/approvals/?risk=write", **HTMX).status_code == 200
    assert signed_in(reviewer_client)
    assert not AuditEvent.objects.filter(action="auth.logout").exists()


def test_the_pages_own_polling_does_not_keep_an_abandoned_tab_signed_in(
    world: World, reviewer_client: Client, clock: Clock
) -> None:
    """The call page polls every few seconds, the queue every five: a tab left open would
    otherwise keep its session alive for ever. The poll that finds it idle signs it out and
    sends the tab to sign in, back to the page it showed."""
    call = make_call(world)
    page = f"/approvals/{call.pk}/"
    assert reviewer_client.get(page).status_code == 200
    since = int(timezone.now().timestamp() * 1_000_000)
    from_page = {**HTMX, "HTTP_HX_CURRENT_URL": f"http://testserver{page}"}

    for minutes in range(1, 30):
        clock.at(minutes=minutes)
        assert reviewer_client.post(f"{page}live/?v=0", **from_page).status_code == 200
        assert reviewer_client.get(f"/approvals/?since={since}", **HTMX).status_code == 200

    clock.at(minutes=31)
    poll = reviewer_client.post(f"{page}live/?v=0", **from_page)

    assert poll.status_code == 204
    assert poll["HX-Redirect"] == f"/login/?session=ended&next=%2Fapprovals%2F{call.pk}%2F"
    assert not signed_in(reviewer_client)
    assert len(ended(world, "idle")) == 1


def test_a_page_address_that_is_no_url_still_signs_an_idle_session_out(
    world: World, reviewer_client: Client, clock: Clock
) -> None:
    """The page a session ended on comes from htmx's HX-Current-URL header: one that is no
    URL (an unclosed IPv6 host) made the sign-out a 500, and the session stayed."""
    assert reviewer_client.get("/approvals/").status_code == 200
    clock.at(minutes=31)
    poll = reviewer_client.get("/approvals/", **HTMX, HTTP_HX_CURRENT_URL="http://[::1/x")
    assert poll.status_code == 204 and poll["HX-Redirect"] == "/login/?session=ended"
    assert not signed_in(reviewer_client)
    assert len(ended(world, "idle")) == 1


def test_the_chain_verifications_progress_polling_is_not_activity(
    world: World, clock: Clock
) -> None:
    client = Client()
    client.force_login(make_auditor())
    run = VerificationRun.objects.create(requested_by_label="dana", state="running", total=10)
    for minutes in (10, 20, 29):
        clock.at(minutes=minutes)
        assert client.get(f"/audit/verify/{run.pk}/", **HTMX).status_code == 200
    clock.at(minutes=31)
    assert client.get(f"/audit/verify/{run.pk}/", **HTMX)["HX-Redirect"].startswith("/login/")
    assert not signed_in(client)


def test_a_session_ends_at_its_maximum_age_however_busy_its_person(
    world: World, reviewer_client: Client, clock: Clock
) -> None:
    for step in range(1, 29):  # a request every 25 minutes, for 11 h 40 min
        clock.at(minutes=25 * step)
        assert reviewer_client.get("/approvals/").status_code == 200

    clock.at(minutes=25 * 29)  # 12 h 5 min after the sign-in
    response = reviewer_client.get("/approvals/")

    assert response.status_code == 302 and response["Location"].startswith("/login/?session=ended")
    assert not signed_in(reviewer_client)
    assert len(ended(world, "max_age")) == 1 and not ended(world, "idle")


def test_a_poll_of_a_session_that_ended_elsewhere_goes_to_sign_in_whole(world: World) -> None:
    """Signed out in another tab: the queue's poll was sent to the sign-in page, which htmx
    swapped into the table (and the call page's, which swaps nothing, polled on unanswered)."""
    since = int(datetime.now().timestamp() * 1_000_000)
    poll = Client().get(f"/approvals/?since={since}", **HTMX)
    assert poll.status_code == 204 and poll["HX-Redirect"].startswith("/login/?next=")
