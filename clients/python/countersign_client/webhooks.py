"""Checking the signature of a Countersign webhook on the receiving side."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Countersign-Signature"


def verify_webhook(secret: str, body: bytes, signature: str, *, tolerance: int = 300) -> bool:
    """True when ``signature`` (the ``Countersign-Signature`` header, ``t=...,v1=...``) is the
    agent's HMAC-SHA256 of ``f"{t}.".encode() + body`` and ``t`` is within ``tolerance``
    seconds of now. Pass the raw request body, before any JSON parsing."""
    parts = dict(item.split("=", 1) for item in signature.split(",") if "=" in item)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts.get("v1", ""))
