""" "Verify the chain now": asked for on the analytics page, walked by a worker with its
progress on the page, recorded with who asked and when."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from audit import chain, verification_runs, verify
from audit.models import AuditEvent, VerificationRun
from tests.audit.conftest import make_auditor, make_events
from tests.conftest import World

pytestmark = pytest.mark.django_db


def test_an_auditor_asks_and_a_worker_walks_and_records_who_asked(
    auditor_client: Client, django_capture_on_commit_callbacks
) -> None:
    make_events(5)
    chain.seal_and_anchor()
    with django_capture_on_commit_callbacks() as sent:
        response = auditor_client.post("/audit/verify/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    run = VerificationRun.objects.get()
    assert run.state == "queued" and run.requested_by_label == "dana"
    assert 'id="verify-progress"' in response.content.decode()
    assert f'hx-get="/audit/verify/{run.pk}/"' in response.content.decode()
    assert len(sent) == 1
    assert AuditEvent.objects.filter(
        action="audit.verification_requested", actor_label="dana"
    ).exists()

    done = verification_runs.run_verification(run.pk)

    assert done is not None and done.state == "done" and done.ok is True
    assert done.checked >= 6
    outcome = AuditEvent.objects.get(action="audit.chain_verified")
    assert (outcome.actor_label, outcome.outcome) == ("dana", "ok")
    page = auditor_client.get(f"/audit/verify/{run.pk}/").content.decode()
    assert "asked for by <strong>dana</strong>" in page
    assert "hx-trigger" not in page  # no more polling once done
    assert 'id="verify-now"' in page
    assert verification_runs.run_verification(run.pk) is None  # a duplicate delivery


def test_progress_shows_while_the_walk_runs(auditor_client: Client) -> None:
    run = VerificationRun.objects.create(
        requested_by_label="dana", state="running", checked=50_000, total=200_000
    )
    page = auditor_client.get(f"/audit/verify/{run.pk}/").content.decode()
    assert "Walking the chain: 50000 of 200000 events" in page
    assert 'value="25"' in page
    assert 'hx-trigger="every 2s"' in page


def test_asking_again_joins_the_run_under_way(auditor_client: Client) -> None:
    auditor_client.post("/audit/verify/")
    auditor_client.post("/audit/verify/")
    assert VerificationRun.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_auditors_asking_at_once_start_one_walk() -> None:
    """The second asks while the first's request is still committing: no run is under way
    yet for it to wait on, and it started a second walk of the whole chain."""
    first_auditor, second_auditor = make_auditor("dana"), make_auditor("erin")
    asked, release = threading.Event(), threading.Event()
    answers: dict[str, tuple[VerificationRun, bool]] = {}

    def ask(name: str, user, *, hold: bool) -> None:
        try:
            with transaction.atomic():
                answers[name] = verification_runs.request_verification(
                    user=user, send=lambda run_id: None
                )
                if hold:
                    asked.set()
                    release.wait(10)
        finally:
            connection.close()

    first = threading.Thread(target=ask, args=("first", first_auditor), kwargs={"hold": True})
    first.start()
    assert asked.wait(10)
    second = threading.Thread(target=ask, args=("second", second_auditor), kwargs={"hold": False})
    second.start()
    second.join(1)  # it waits for the first to commit, or it has started a walk of its own
    release.set()
    first.join(10)
    second.join(10)

    assert VerificationRun.objects.count() == 1
    assert answers["second"] == (answers["first"][0], False)
    assert AuditEvent.objects.filter(action="audit.verification_requested").count() == 1


@pytest.fixture
def broker_down() -> Iterator[None]:
    """Celery's broker at a port nobody listens on, as when Redis is down."""
    from config.celery import app

    original = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    app._after_fork()  # drop the pooled connections to the real broker
    try:
        yield
    finally:
        app.conf.broker_url = original
        app._after_fork()


@pytest.mark.django_db(transaction=True)  # the task is sent at the commit, in the request
def test_a_run_the_queue_cannot_take_ends_unwalked_and_gives_the_button_back(
    auditor_client: Client, broker_down: None, caplog
) -> None:
    """It answered 500, and left a queued run that no worker would take: every auditor who
    asked in the next ten minutes joined it, and watched it wait."""
    response = auditor_client.post("/audit/verify/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    run = VerificationRun.objects.get()
    assert run.state == "done" and run.started_at is None
    assert "task queue could not be reached" in run.reason
    assert "could not queue chain verification run" in caplog.text
    assert verification_runs.active_run() is None, "asking again starts a new run"
    page = auditor_client.get(f"/audit/verify/{run.pk}/").content.decode()
    assert 'id="verify-now"' in page and "hx-trigger" not in page


def test_reviewers_cannot_ask_and_nobody_asks_with_get(
    world: World, reviewer_client: Client, auditor_client: Client
) -> None:
    assert reviewer_client.post("/audit/verify/").status_code == 403
    assert auditor_client.get("/audit/verify/").status_code == 405
    assert not VerificationRun.objects.exists()


def test_a_walk_cut_short_reads_incomplete_on_the_page_not_broken(
    auditor_client: Client, monkeypatch
) -> None:
    """The database stopped the walk (a statement timeout): the trail records it as
    incomplete, and the button's line must not tell the auditor the chain is broken."""
    make_events(3)
    chain.seal_and_anchor()
    auditor_client.post("/audit/verify/")
    run = VerificationRun.objects.get()
    cut_short = verify.Verification(
        ok=False, checked=2, head_seq=3, head_hash="x", interrupted=True,
        reason="the walk was interrupted after seq 2 of 3 (QueryCanceled): run it again",
    )  # fmt: skip
    monkeypatch.setattr(verify, "verify_chain", lambda progress=None: cut_short)

    done = verification_runs.run_verification(run.pk)

    assert done is not None and done.state == "done" and done.ok is None
    assert AuditEvent.objects.get(action="audit.chain_verified").outcome == "incomplete"
    page = auditor_client.get(f"/audit/verify/{run.pk}/").content.decode()
    assert '<span class="badge badge-warn">incomplete</span>' in page  # the last walk
    form = page[page.index('id="verify-now"') :]
    assert "incomplete" in form and "broken" not in form


def test_a_run_whose_worker_died_gives_the_button_back(auditor_client: Client) -> None:
    """A worker killed mid-walk (a deploy, the OOM killer) never finishes its run. Past
    STALE_AFTER it is taken for dead and asking again starts a new walk: the page must offer
    the button again instead of polling a walk that will never move."""
    dead = VerificationRun.objects.create(
        requested_by_label="dana", state="running", checked=10, total=100
    )
    VerificationRun.objects.filter(pk=dead.pk).update(
        requested_at=timezone.now() - verification_runs.STALE_AFTER - timedelta(minutes=1)
    )
    for url in ("/audit/analytics/", f"/audit/verify/{dead.pk}/"):
        page = auditor_client.get(url).content.decode()
        assert 'id="verify-now"' in page, url
        assert "hx-trigger" not in page, url

    auditor_client.post("/audit/verify/")
    assert VerificationRun.objects.exclude(pk=dead.pk).get().state == "queued"


def test_a_long_walk_still_reporting_progress_is_joined_not_doubled(
    auditor_client: Client,
) -> None:
    """Asked for long ago, still walking a long trail: not dead, so asking again joins it
    and the page keeps showing its progress."""
    long_ago = timezone.now() - verification_runs.STALE_AFTER - timedelta(minutes=30)
    walking = VerificationRun.objects.create(
        requested_by_label="dana", state="running", checked=10_000_000, total=40_000_000
    )
    VerificationRun.objects.filter(pk=walking.pk).update(
        requested_at=long_ago, started_at=long_ago, progressed_at=timezone.now()
    )
    auditor_client.post("/audit/verify/")
    assert list(VerificationRun.objects.values_list("pk", flat=True)) == [walking.pk]
    page = auditor_client.get("/audit/analytics/").content.decode()
    assert "Walking the chain: 10000000 of 40000000 events" in page
    assert 'id="verify-now"' not in page


def test_an_anchor_file_the_worker_cannot_read_ends_the_run_without_a_verdict(
    auditor_client: Client, anchor_path
) -> None:
    """verify_audit says it cannot read the anchor file; the auditor's run must end the same
    way (recorded, no verdict) rather than crash and stay "walking" on the page."""
    make_events(3)
    chain.seal_pending()
    anchor_path.mkdir()  # what a volume mounted at the wrong place gives
    auditor_client.post("/audit/verify/")
    run = VerificationRun.objects.get()

    done = verification_runs.run_verification(run.pk)

    assert done is not None and done.state == "done" and done.ok is None
    assert "cannot read the anchor file" in done.reason
    outcome = AuditEvent.objects.get(action="audit.chain_verified")
    assert (outcome.actor_label, outcome.outcome) == ("dana", "incomplete")
    page = auditor_client.get(f"/audit/verify/{run.pk}/").content.decode()
    assert 'id="verify-now"' in page and "hx-trigger" not in page


def test_the_scheduled_walk_records_an_unreadable_anchor_file_too(anchor_path) -> None:
    """Otherwise the panel keeps showing the last walk that worked, however old."""
    from audit import tasks

    make_events(2)
    chain.seal_pending()
    anchor_path.mkdir()
    assert tasks.verify_chain() is False
    outcome = AuditEvent.objects.get(action="audit.chain_verified")
    assert outcome.outcome == "incomplete"
    assert "cannot read the anchor file" in outcome.data["reason"]


def test_a_run_that_waited_past_stale_after_and_was_asked_again_does_not_walk_too(
    auditor_client: Client,
) -> None:
    """The workers' backlog held the first run past STALE_AFTER: taken for dead, it was asked
    for again. Both deliveries reach a worker in the end; only the later run walks."""
    make_events(3)
    chain.seal_and_anchor()
    auditor_client.post("/audit/verify/")
    first = VerificationRun.objects.get()
    VerificationRun.objects.filter(pk=first.pk).update(
        requested_at=timezone.now() - verification_runs.STALE_AFTER - timedelta(minutes=1)
    )
    auditor_client.post("/audit/verify/")
    second = VerificationRun.objects.exclude(pk=first.pk).get()

    assert verification_runs.run_verification(first.pk) is None
    done = verification_runs.run_verification(second.pk)

    assert done is not None and done.state == "done" and done.ok is True
    assert AuditEvent.objects.filter(action="audit.chain_verified").count() == 1
    first.refresh_from_db()
    assert first.state == "done" and first.started_at is None and first.ok is None
    assert f"superseded by run {second.pk}" in first.reason
    assert verification_runs.latest_run() == done
    page = auditor_client.get(f"/audit/verify/{first.pk}/").content.decode()
    assert 'id="verify-now"' in page and "hx-trigger" not in page


@pytest.mark.django_db(transaction=True)
def test_a_run_taken_for_dead_while_it_walks_has_no_second_walk_beside_it(
    monkeypatch,
) -> None:
    """A walk silent past STALE_AFTER (a stalled read, a paused worker) is taken for dead and
    asked for again; the second run reaches a worker while the first still walks."""
    auditor = make_auditor("dana")
    walking, release = threading.Event(), threading.Event()
    walks: list[int] = []
    real_walk = verify.verify_chain

    def slow_walk(progress=None) -> verify.Verification:
        walks.append(len(walks) + 1)
        if len(walks) == 1:
            walking.set()
            release.wait(10)
        return real_walk(progress=progress)

    monkeypatch.setattr(verify, "verify_chain", slow_walk)
    first, _ = verification_runs.request_verification(user=auditor, send=lambda run_id: None)

    def work() -> None:
        try:
            verification_runs.run_verification(first.pk)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert walking.wait(10)
        long_ago = timezone.now() - verification_runs.STALE_AFTER - timedelta(minutes=1)
        VerificationRun.objects.filter(pk=first.pk).update(
            requested_at=long_ago, progressed_at=long_ago
        )
        second, new = verification_runs.request_verification(user=auditor, send=lambda run_id: None)
        assert new

        assert verification_runs.run_verification(second.pk) is None
        assert walks == [1], "a second walk ran beside the first"
    finally:
        release.set()
        worker.join(10)

    second.refresh_from_db()
    assert second.state == "done" and second.started_at is None
    assert "another walk" in second.reason
    first.refresh_from_db()
    assert first.state == "done" and first.ok is True
    assert verification_runs.latest_run() == first
    assert AuditEvent.objects.filter(action="audit.chain_verified").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_walk_reports_its_progress_while_it_streams_the_chain(monkeypatch) -> None:
    """Progress is reported every PROGRESS_EVERY events, while the chain still streams in
    on the walk's connection: written on that connection it waited on the stream for ever,
    and a trail of 50,000 events left every auditor's run "walking"."""
    make_events(35)
    chain.seal_and_anchor()
    monkeypatch.setattr(verify, "PROGRESS_EVERY", 10)
    run, _ = verification_runs.request_verification(
        user=make_auditor("dana"), send=lambda run_id: None
    )

    def work() -> None:
        try:
            verification_runs.run_verification(run.pk)
        finally:
            connection.close()

    # A daemon: if the walk hangs, the test fails instead of hanging with it.
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "the walk hung at its first progress report"
    run.refresh_from_db()
    assert run.state == "done" and run.ok is True and run.checked == 35


@pytest.mark.django_db(transaction=True)
def test_the_scheduled_walk_does_not_start_beside_another() -> None:
    """Beat sends a walk every hour: one of a chain that takes longer, or an auditor's under
    way, had a second walk of the whole table beside it, then a third."""
    from audit import tasks

    make_events(3)
    chain.seal_and_anchor()
    other = connection.copy()  # another worker, walking: it holds the walk's lock
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [verification_runs.WALK_LOCK_KEY])
        assert tasks.verify_chain() is None
        assert not AuditEvent.objects.filter(action="audit.chain_verified").exists()
    finally:
        other.rollback()
        other.close()
    assert tasks.verify_chain() is True
    assert AuditEvent.objects.filter(action="audit.chain_verified").count() == 1
