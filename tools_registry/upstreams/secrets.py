"""Upstream header values (an ``Authorization`` header, an API key), encrypted at rest.

Fernet (``cryptography``) with the keys in ``UPSTREAM_SECRETS_KEY`` (comma-separated: the
first encrypts, every one decrypts, so a key can be rotated), or by default a key derived
from ``SECRET_KEY`` (rotating that then means entering the headers again). Only header
names are ever shown, logged or audited; values are decrypted just before a request.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Headers = list[tuple[str, str]]


class SecretsUnreadable(Exception):
    """The stored headers cannot be decrypted with the configured keys."""


@cache
def _cipher(keys: str, secret_key: str) -> MultiFernet:
    configured = [k.strip() for k in keys.split(",") if k.strip()]
    if not configured:
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"countersign-upstream-headers",
            info=b"fernet",
        ).derive(secret_key.encode())
        configured = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(key.encode()) for key in configured])


def cipher() -> MultiFernet:
    return _cipher(settings.UPSTREAM_SECRETS_KEY, settings.SECRET_KEY)


def check_keys() -> None:
    """At start (``ToolsRegistryConfig.ready``): the keys are read when headers are, and one
    that is no Fernet key failed every request to an upstream with headers, and every save
    of them."""
    try:
        cipher()
    except ValueError as problem:  # the message never quotes the key
        raise ImproperlyConfigured(f"UPSTREAM_SECRETS_KEY: {problem}") from None


def encrypt(headers: Headers) -> str:
    return cipher().encrypt(json.dumps(headers).encode()).decode() if headers else ""


def decrypt(token: str) -> Headers:
    if not token:
        return []
    try:
        return [
            (str(name), str(value)) for name, value in json.loads(cipher().decrypt(token.encode()))
        ]
    except InvalidToken:
        raise SecretsUnreadable(
            "The upstream's headers cannot be decrypted: UPSTREAM_SECRETS_KEY (or SECRET_KEY) "
            "changed since they were set. Enter them again."
        ) from None


def parse_header_lines(lines: list[str]) -> Headers:
    """``Name: value`` lines, as an admin types them; ValueError says what is wrong."""
    headers: Headers = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name or not all(c.isalnum() or c in "-_" for c in name):
            # Not quoted: a line without its name ("Bearer sk_live_...") is the credential.
            raise ValueError(f"Write each header as 'Name: value' (line {number} is not).")
        if any(ch in value for ch in "\r\n\x00"):
            raise ValueError(f"The value of {name} may not span lines.")
        headers.append((name, value))
    return headers


def without_credentials(message: str, upstream_headers: Headers) -> str:
    """An upstream's message with the values of the headers it was sent (its credentials)
    taken out, whole or as their tokens ("Bearer <token>"): some servers quote them back,
    and the message reaches the agent, the call and the trail. Take them out before cutting
    a message short: a cut through a credential leaves its start."""
    for secret in _credentials(upstream_headers):
        if secret in message:
            message = message.replace(secret, "[credential]")
    return message


def answer_without_credentials(answer: dict[str, Any], upstream_headers: Headers) -> dict[str, Any]:
    """An upstream's answer (a 2xx, an MCP result, a lookup's finding) with its credentials
    taken out of every string in it, names too (``without_credentials``): an echo endpoint
    or a debug field quotes them back, and the answer is the call's result, the agent's to
    read. Walked without recursion: an answer nests as deep as its parser allowed."""
    if not upstream_headers:
        return answer
    pending: list[tuple[Any, Any]] = []

    def copied(value: Any) -> Any:
        if isinstance(value, dict | list):
            empty: Any = {} if isinstance(value, dict) else []
            pending.append((value, empty))
            return empty
        return without_credentials(value, upstream_headers) if isinstance(value, str) else value

    cleaned: dict[str, Any] = copied(answer)
    while pending:
        source, target = pending.pop()
        if isinstance(source, dict):
            for name, value in source.items():
                target[copied(name)] = copied(value)
        else:
            target.extend(copied(value) for value in source)
    return cleaned


def without_cut_credential(text: str, upstream_headers: Headers) -> str:
    """The text of an answer cut short, without the start of a credential the cut went
    through (the rest of it is ``without_credentials``'s): an agent that can move the echo
    against the cut would read a credential's every start. The text is cut anyway."""
    for secret in _credentials(upstream_headers):
        for length in range(len(secret) - 1, 0, -1):
            if text.endswith(secret[:length]):
                text = text[:-length]
                break
    return text


def _credentials(upstream_headers: Headers) -> list[str]:
    """The header values, whole and as their tokens ("Bearer <token>"), longest first."""
    parts = {part for _, value in upstream_headers for part in (value, *value.split())}
    return sorted((p for p in parts if len(p) >= CREDENTIAL_SHORTEST), key=len, reverse=True)


# Shorter parts of a header value ("Bearer", a tenant's "eu") are not credentials to hide.
CREDENTIAL_SHORTEST = 8
