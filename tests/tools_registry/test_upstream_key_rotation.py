"""Rotating UPSTREAM_SECRETS_KEY: the new key first, ``rotate_upstream_keys``, then the old
key out. The first key encrypted only what was saved after it came; every header stored
before stayed under the old key, and took the upstream's calls down with it when that key
went (``upstream_headers_unreadable``), so no key could ever be retired."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from tools_registry.models import Upstream
from tools_registry.services.upstreams import register_upstream
from tools_registry.upstreams import secrets

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-rotation-4417"


def _register(name: str) -> Upstream:
    return register_upstream(
        name=name,
        kind=Upstream.Kind.MCP,
        url=f"http://127.0.0.1:9/{name}",
        headers=[("X-Api-Key", CANARY)],
        enabled=False,
    )


def _rotate() -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("rotate_upstream_keys", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_old_key_can_go_once_the_headers_are_encrypted_again(settings: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.UPSTREAM_SECRETS_KEY = old
    upstream = _register("billing")
    settings.UPSTREAM_SECRETS_KEY = f"{new},{old}"
    out, _ = _rotate()
    assert "billing" in out
    settings.UPSTREAM_SECRETS_KEY = new  # the old key retired
    upstream.refresh_from_db()
    assert secrets.decrypt(upstream.headers_encrypted) == [("X-Api-Key", CANARY)]
    event = AuditEvent.objects.get(action="upstream.headers_reencrypted")
    assert event.data == {"upstream": "billing", "header_names": ["X-Api-Key"]}
    assert CANARY not in json.dumps(event.data) and CANARY not in out


def test_headers_under_the_key_derived_from_secret_key_move_to_the_first_key(
    settings: Any,
) -> None:
    """Without UPSTREAM_SECRETS_KEY the headers are under a key derived from SECRET_KEY, which
    no one can list beside a new one: setting the first key made them all unreadable."""
    settings.UPSTREAM_SECRETS_KEY = ""
    upstream = _register("billing")
    settings.UPSTREAM_SECRETS_KEY = Fernet.generate_key().decode()
    _rotate()
    upstream.refresh_from_db()
    assert secrets.decrypt(upstream.headers_encrypted) == [("X-Api-Key", CANARY)]


def test_headers_no_key_reads_are_named_and_left_as_they_are(settings: Any) -> None:
    lost, kept = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.UPSTREAM_SECRETS_KEY = lost
    unreadable = _register("billing")
    settings.UPSTREAM_SECRETS_KEY = kept
    readable = _register("tickets")
    stored = unreadable.headers_encrypted
    with pytest.raises(CommandError, match="billing"):
        _rotate()
    unreadable.refresh_from_db()
    assert unreadable.headers_encrypted == stored
    readable.refresh_from_db()
    assert secrets.decrypt(readable.headers_encrypted) == [("X-Api-Key", CANARY)]
    assert list(
        AuditEvent.objects.filter(action="upstream.headers_reencrypted").values_list(
            "data__upstream", flat=True
        )
    ) == ["tickets"]
