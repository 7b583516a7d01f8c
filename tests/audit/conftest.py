"""Fixtures of the audit trail's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pgtrigger
import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.db import connection

from audit import chain
from audit.log import record
from audit.models import AuditEvent


@pytest.fixture(autouse=True)
def fresh_analytics() -> None:
    """The analytics charts are cached for a minute; each test starts without them."""
    from audit.views.analytics import WINDOWS

    cache.delete_many([f"audit:analytics:{days}" for days in WINDOWS])


@pytest.fixture(autouse=True)
def anchor_path(settings, tmp_path: Path) -> Path:
    """Each test anchors to its own file."""
    settings.AUDIT_ANCHOR_PATH = tmp_path / "anchor.jsonl"
    return settings.AUDIT_ANCHOR_PATH


def make_events(count: int, *, prefix: str = "test.event") -> list[AuditEvent]:
    return [
        record(action=prefix, outcome="ok", session_id="s-1", data={"n": n, "note": f"event {n}"})
        for n in range(count)
    ]


def tamper(sql: str, params: list | None = None) -> None:
    """Change the trail the way someone with database access would: triggers switched off."""
    with (
        pgtrigger.ignore(
            "audit.AuditEvent:seal_only_update", "audit.AuditEvent:append_only_delete"
        ),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, params or [])


@pytest.fixture
def sealed_chain(db: None) -> list[AuditEvent]:
    """Twelve events, sealed and anchored."""
    make_events(12)
    chain.seal_and_anchor()
    return list(AuditEvent.objects.order_by("seq"))


def make_auditor(username: str = "dana") -> User:
    auditor = User.objects.create_user(username, f"{username}@example.com", "pw")
    group, _ = Group.objects.get_or_create(name="auditors")
    group.permissions.add(Permission.objects.get(codename="view_auditevent"))
    auditor.groups.add(group)
    return User.objects.get(pk=auditor.pk)  # fresh: no permission cache


@pytest.fixture
def auditor(db: None) -> User:
    return make_auditor()


@pytest.fixture
def auditor_client(auditor: User, client) -> Iterator:
    client.force_login(auditor)
    yield client
