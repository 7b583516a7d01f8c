"""The sandbox's admin pages: a JSON field holding what jsonb cannot store is a form error."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from sandbox.models import Effect

pytestmark = pytest.mark.django_db

UNSTORABLE = {
    "an unpaired surrogate": '{"note": "\\ud800"}',
    "a NUL": '{"note": "\\u0000"}',
    "a number past a float": '{"amount": 1e400}',
    "NaN": "NaN",
    "nesting past Python's reader": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("summary", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_an_effect_summary_jsonb_cannot_store_is_a_form_error(summary: str) -> None:
    # Each was a 500: PostgreSQL refused the row, or the page shown again could not be
    # encoded, or the reader ran out of stack.
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root"))
    response = client.post(
        "/admin/sandbox/effect/add/",
        {
            "tool": "issue_refund",
            "idempotency_key": "key-1",
            "at_0": "2026-01-01",
            "at_1": "10:00:00",
            "summary": summary,
            "deliveries": "1",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["summary"]
    assert not Effect.objects.exists()
