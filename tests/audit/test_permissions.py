"""Auditors read everything and change nothing; reviewers and outsiders see no trail."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from audit.log import record
from audit.models import AuditEvent
from tests.audit.conftest import make_auditor
from tests.conftest import World

pytestmark = pytest.mark.django_db

AUDIT_URLS = [
    "/audit/",
    "/audit/export.csv",
    "/audit/export.jsonl",
    "/audit/verify_export.py",
    "/audit/analytics/",
    "/audit/session/?agent=support-bot&session=s",
]


@pytest.fixture
def call_id() -> uuid.UUID:
    call_id = uuid.uuid4()
    AuditEvent.objects.create(
        action="call.submitted", actor_type="system", agent_name="support-bot",
        session_id="s", call_id=call_id, data={},
    )  # fmt: skip
    return call_id


@pytest.mark.parametrize("who", ["bob", "charlie", "alice"])
def test_reviewers_and_outsiders_get_403_everywhere_exports_included(
    world: World, call_id: uuid.UUID, who: str
) -> None:
    client = Client()
    client.force_login(getattr(world, who))
    for url in [*AUDIT_URLS, f"/audit/calls/{call_id}/"]:
        assert client.get(url).status_code == 403, url


def test_anonymous_people_are_sent_to_sign_in(db: None) -> None:
    response = Client().get("/audit/export.csv")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_an_auditor_reads_every_page(world: World, call_id: uuid.UUID) -> None:
    client = Client()
    client.force_login(make_auditor())
    for url in [*AUDIT_URLS, f"/audit/calls/{call_id}/"]:
        assert client.get(url).status_code == 200, url


def test_an_auditor_changes_nothing(world: World, call_id: uuid.UUID) -> None:
    auditor = make_auditor()
    client = Client()
    client.force_login(auditor)
    record(action="test.event", data={})
    before = list(AuditEvent.objects.order_by("id").values_list("id", "hash", "data"))
    for url in [*AUDIT_URLS, f"/audit/calls/{call_id}/"]:
        assert client.post(url, {"x": "y"}).status_code == 405, url
    # Not a reviewer: cannot decide; not staff: no admin.
    assert client.post(
        f"/approvals/{uuid.uuid4()}/decide/", {"verdict": "approve"}
    ).status_code in (403, 404)
    assert client.get("/admin/audit/auditevent/").status_code == 302
    after = list(AuditEvent.objects.order_by("id").values_list("id", "hash", "data"))
    assert after[: len(before)] == before


def test_not_even_a_superuser_can_change_an_event_in_the_admin(world: World) -> None:
    from django.contrib.auth.models import User

    root = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    event = record(action="test.event", data={"a": 1})
    assert client.get(f"/admin/audit/auditevent/{event.pk}/change/").status_code == 200  # view
    assert (
        client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"action": "x"}).status_code
        == 403
    )
    assert (
        client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    event.refresh_from_db()
    assert event.action == "test.event"


@pytest.mark.parametrize("path", ["/audit/", "/audit/analytics/", "/audit/export.csv"])
def test_auditor_pages_are_never_cached(auditor_client, path: str) -> None:
    response = auditor_client.get(path)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
