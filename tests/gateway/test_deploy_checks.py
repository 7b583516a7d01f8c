"""``manage.py check --deploy`` names the settings a services-mode deployment starts with
but cannot work with: links that lead to the server's own loopback, notifications nobody
receives (Django's own ``mail.E001``)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

SMTP = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {}}}


def deploy_check() -> str:
    out = StringIO()
    call_command("check", deploy=True, stdout=out, stderr=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("public_url", "secure", "expected"),
    [
        ("http://127.0.0.1:8000", True, {"countersign.W001"}),
        ("http://localhost", False, {"countersign.W001"}),
        ("http://countersign.example.com", True, {"countersign.W002"}),
        ("http://countersign.example.com", False, set()),
        ("https://countersign.example.com", True, set()),
    ],
)
def test_a_deployment_is_told_where_its_links_lead(
    public_url: str, secure: bool, expected: set[str]
) -> None:
    with override_settings(
        EMBEDDED=False, PUBLIC_URL=public_url, MAILERS=SMTP, SESSION_COOKIE_SECURE=secure
    ):
        found = {
            code for code in ("W001", "W002", "W003") if f"countersign.{code}" in deploy_check()
        }
    assert {f"countersign.{code}" for code in found} == expected


def test_the_embedded_mode_is_not_a_deployment() -> None:
    with override_settings(EMBEDDED=True, PUBLIC_URL="http://127.0.0.1:8000", MAILERS=SMTP):
        assert "countersign." not in deploy_check()
