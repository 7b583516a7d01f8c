"""Checking a Countersign webhook on the receiving side (Standard Webhooks).

Countersign sends ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; the last
holds one or more space-separated ``v1,<base64>`` signatures, each the HMAC-SHA256 of
``f"{id}.{timestamp}.{body}"`` keyed with the base64 part of a ``whsec_...`` secret. After a
secret rotation the header carries the new secret's signature and, for a while, those of
the old ones (up to three, unless an admin expired them at once after a leak), so a
receiver that has not switched yet keeps verifying. ``standardwebhooks.Webhook(secret)
.verify(body, headers)`` checks the same thing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


def verify_webhook(
    secret: str | Iterable[str],
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    tolerance: int = 300,
) -> bool:
    """True when any signature in ``headers`` was made with ``secret`` (or any of several
    secrets, for a receiver in the middle of a rotation) over ``body`` and the timestamp is
    within ``tolerance`` seconds of now. Pass the raw request body, before any JSON
    parsing (text is verified as its UTF-8 bytes, as ``standardwebhooks`` does), and the
    request's headers (any case). A secret's surrounding whitespace (the line end of one
    read from a file) is not part of it.

    A secret that is empty (``""``, ``"whsec_"``) or not base64 is skipped in a list; when
    no usable secret is left this raises ``ValueError``, as ``standardwebhooks`` refuses an
    empty secret: an empty HMAC key is one anybody can sign with, so a receiver whose
    secret is unset must fail loudly, not accept forgeries."""
    keys = _keys([secret] if isinstance(secret, str) else list(secret))
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    message_id = lowered.get(ID_HEADER, "")
    if not message_id:
        return False
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER, ""))
        # A timestamp of hundreds of digits is no float: OverflowError, not "not verified".
        stale = abs(time.time() - timestamp) > tolerance
    except (ValueError, OverflowError):
        return False
    if stale:
        return False
    # A signature that is not ASCII cannot be base64, and compare_digest refuses to compare it.
    given = [
        part.split(",", 1)[1]
        for part in lowered.get(SIGNATURE_HEADER, "").split()
        if part.startswith("v1,") and part.isascii()
    ]
    payload = body.encode() if isinstance(body, str) else bytes(body)
    signed = f"{message_id}.{timestamp}.".encode() + payload
    for key in keys:
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, signature) for signature in given):
            return True
    return False


def _keys(secrets: list[str]) -> list[bytes]:
    """The HMAC keys of the usable secrets; ``ValueError`` if none is."""
    keys = []
    for secret in secrets:
        try:
            key = _key(secret)
        except (binascii.Error, ValueError):
            continue
        if key:
            keys.append(key)
    if not keys:
        raise ValueError("no usable webhook secret: each one is empty or not base64")
    return keys


def _key(secret: str) -> bytes:
    encoded = secret.strip().removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
