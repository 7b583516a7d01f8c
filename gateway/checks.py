"""Deployment checks (``manage.py check --deploy``): settings that start fine but leave a
services-mode deployment broken for the people and agents who use it. (A mail backend that
sends nothing is Django's own ``mail.E001``.)"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Tags, Warning, register

from core.hosts import is_loopback

# The addresses meaning "any interface", which a server binds and nobody can reach.
UNSPECIFIED = {"0.0.0.0", "::"}  # noqa: S104 (compared, not bound)


@register(Tags.security, deploy=True)
def public_url(**_: Any) -> list[Warning]:
    """Every ``status_url`` an agent is given and every link in a reviewer's e-mail starts
    with ``PUBLIC_URL``: left at its default, each points at the server's own loopback."""
    if settings.EMBEDDED:
        return []
    parts = urlsplit(settings.PUBLIC_URL)
    found = []
    host = parts.hostname or ""
    if is_loopback(host) or host in UNSPECIFIED:
        found.append(
            Warning(
                f"PUBLIC_URL is {settings.PUBLIC_URL}: the status URLs agents are given and "
                "the links in reviewers' e-mails point at this machine's loopback.",
                hint="Set PUBLIC_URL to the address agents and reviewers reach (https://...).",
                id="countersign.W001",
            )
        )
    elif parts.scheme != "https" and settings.SESSION_COOKIE_SECURE:
        found.append(
            Warning(
                f"PUBLIC_URL is {settings.PUBLIC_URL}, not https, while cookies are sent over "
                "HTTPS only: reviewers following its links cannot stay signed in.",
                hint="Give PUBLIC_URL the https:// address the proxy serves.",
                id="countersign.W002",
            )
        )
    return found
