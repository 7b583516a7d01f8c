"""Taking the trail out is itself on record: each export download is one audit.exported
event (docs/audit.md, the auditor workspace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.test import Client
from django.utils.http import urlencode

from audit import chain
from audit.masking import mask_text
from audit.models import ActorType, AuditEvent
from tests.audit.test_events_view import ids_on
from tests.audit.test_exports import _verify, download, exported_ids, mixed_trail  # noqa: F401

# Every test starts from the exports' own trail: sealed and anchored events, one not yet sealed.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("mixed_trail")]


def exported_events() -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(action="audit.exported").order_by("id")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_each_download_records_who_the_format_and_the_filters_masked(
    auditor_client: Client, auditor: User, fmt: str
) -> None:
    query = {"action": "call.submitted", "session": "ada@example.com", "start": "2026-01-01"}
    body = download(auditor_client, fmt, urlencode(query))
    (event,) = exported_events()
    assert (event.actor_type, event.actor_id, event.actor_label) == (
        ActorType.USER,
        str(auditor.pk),
        auditor.username,
    )
    assert event.outcome == fmt
    # Masked as the stored session ids are: the fingerprint matches the sessions it asked for.
    masked = {**query, "session": mask_text("ada@example.com")}
    assert event.data == {"format": fmt, "filters": masked}
    assert "ada@example.com" not in json.dumps(event.data)
    assert event.pk not in exported_ids(body, fmt), "its filters leave its own event out"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_whole_export_holds_its_own_event_and_still_verifies(
    auditor_client: Client, fmt: str, tmp_path: Path, anchor_path: Path
) -> None:
    first = download(auditor_client, fmt)
    (own,) = exported_events()
    assert exported_ids(first, fmt)[-1] == own.pk, "recorded before the rows were read"
    chain.seal_and_anchor()
    second = download(auditor_client, fmt)
    earlier, latest = exported_events()
    assert earlier == own and exported_ids(second, fmt)[-1] == latest.pk
    for name, body in (("first", first), ("second", second)):
        path = tmp_path / f"{name}.{fmt}"
        path.write_bytes(body)
        result = _verify(path, "--whole", "--anchor", str(anchor_path))
        assert result.returncode == 0, result.stdout
    # In the second, the first export's event is sealed and checked; only its own is not.
    assert AuditEvent.objects.get(pk=own.pk).seq is not None
    assert "2 against the anchor, 1 not yet sealed" in result.stdout


def test_a_refused_or_forbidden_export_records_nothing(auditor_client: Client) -> None:
    for fmt in ("csv", "jsonl"):
        response = auditor_client.get(f"/audit/export.{fmt}?start=yesterday")
        assert response.status_code == 400
        assert not response.streaming
    reviewer = Client()
    reviewer.force_login(User.objects.create_user("rita", "rita@example.com", "pw"))
    assert reviewer.get("/audit/export.csv").status_code == 403
    assert not exported_events().exists()

    download(auditor_client, "csv", "start=2026-01-01")
    assert exported_events().count() == 1, "an export it can read is recorded"


def test_the_auditors_filter_finds_the_exports(auditor_client: Client, auditor: User) -> None:
    download(auditor_client, "csv", "outcome=pending")
    download(auditor_client, "jsonl")
    csv_export, jsonl_export = exported_events()
    page = auditor_client.get("/audit/?action=audit.exported")
    assert ids_on(page) == [jsonl_export.pk, csv_export.pk]
    assert '<option value="audit.exported" selected>' in page.content.decode()
    # The details column says what each export asked for (a whole export: nothing).
    assert "filters:</span> outcome=pending</span>" in page.content.decode()
    narrowed = auditor_client.get(f"/audit/?action=audit.exported&outcome=csv&actor={auditor}")
    assert ids_on(narrowed) == [csv_export.pk]
