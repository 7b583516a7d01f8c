"""The audit table is append-only in PostgreSQL itself, whoever connects."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from audit import chain
from audit.models import AuditEvent
from tests.audit.conftest import make_events


def _sql(statement: str, params: list | None = None) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params or [])


@pytest.mark.django_db
class TestAppendOnly:
    def test_it_refuses_to_update_a_sealed_event(self, sealed_chain) -> None:
        event = sealed_chain[3]
        with pytest.raises(DatabaseError, match="Cannot update"):
            _sql("UPDATE audit_auditevent SET outcome = 'forged' WHERE id = %s", [event.pk])
        with pytest.raises(DatabaseError, match="Cannot update"):
            _sql("UPDATE audit_auditevent SET hash = repeat('a', 64) WHERE id = %s", [event.pk])

    def test_it_refuses_to_change_an_unsealed_event(self) -> None:
        [event] = make_events(1)
        with pytest.raises(DatabaseError, match="Cannot update"):
            _sql("UPDATE audit_auditevent SET data = '{}' WHERE id = %s", [event.pk])

    def test_it_refuses_a_half_seal_that_would_hide_an_event_outside_the_chain(self) -> None:
        [event] = make_events(1)
        with pytest.raises(DatabaseError, match="Cannot update"):
            _sql("UPDATE audit_auditevent SET hash = repeat('a', 64) WHERE id = %s", [event.pk])

    def test_it_refuses_delete(self, sealed_chain) -> None:
        with pytest.raises(DatabaseError, match="Cannot delete"):
            _sql("DELETE FROM audit_auditevent WHERE id = %s", [sealed_chain[0].pk])
        with pytest.raises(DatabaseError, match="Cannot delete"):
            AuditEvent.objects.filter(pk=sealed_chain[0].pk).delete()

    def test_it_refuses_truncate(self, sealed_chain) -> None:
        with pytest.raises(DatabaseError, match="Cannot truncate"):
            _sql("TRUNCATE audit_auditevent")
        assert AuditEvent.objects.count() == len(sealed_chain)

    def test_sealing_is_the_one_update_allowed_and_only_once(self) -> None:
        make_events(3)
        assert chain.seal_pending() == 3
        assert AuditEvent.objects.filter(hash="").count() == 0
        first = AuditEvent.objects.get(seq=1)
        with pytest.raises(DatabaseError, match="Cannot update"):
            _sql(
                "UPDATE audit_auditevent SET seq = 99, prev_hash = %s, hash = %s WHERE id = %s",
                ["1" * 64, "2" * 64, first.pk],
            )
