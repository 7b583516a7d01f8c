"""The client's ``verify_webhook`` against the Standard Webhooks reference library: it
verifies what Countersign and ``standardwebhooks`` sign, and refuses what
``standardwebhooks`` refuses (an empty secret, a missing id, a forged or garbled signature),
without raising where that library answers "not verified"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
from countersign_client import verify_webhook

from gateway import webhooks

BODY = b'{"type": "call.succeeded"}'
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def signed_headers(key: bytes, message_id: str, body: bytes = BODY) -> dict[str, str]:
    """The headers of a webhook signed by hand with ``key``: a forger knows any empty key."""
    timestamp = int(time.time())
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


def test_the_client_verifies_countersigns_signatures_across_a_rotation() -> None:
    old, new = "whsec_" + "b2xkLXNlY3JldC1rZXk=", "whsec_" + "bmV3LXNlY3JldC1rZXk="
    headers = webhooks.sign([new, old], "msg_1", int(time.time()), BODY)
    assert verify_webhook(new, BODY, headers)
    assert verify_webhook(old, BODY, headers), "either signature of a rotation verifies"
    assert verify_webhook(["whsec_" + "b3RoZXI=", new], BODY, headers)
    assert not verify_webhook(new, BODY + b"x", headers)
    assert not verify_webhook("whsec_" + "b3RoZXI=", BODY, headers)
    assert not verify_webhook(new, BODY, {**headers, "webhook-id": "msg_2"})


def test_it_verifies_what_standardwebhooks_signs() -> None:
    signature = standardwebhooks.Webhook(SECRET).sign("msg_1", datetime.now(UTC), BODY)
    headers = {**signed_headers(b"unused", "msg_1"), "webhook-signature": signature}
    assert verify_webhook(SECRET, BODY, headers)


@pytest.mark.parametrize("secret", ["", "whsec_"])
def test_an_empty_secret_is_refused_like_standardwebhooks(secret: str) -> None:
    """An empty secret is an empty HMAC key, which anybody can sign with."""
    forged = signed_headers(b"", "msg_1")
    with pytest.raises(standardwebhooks.webhooks.EmptyWebhookSecretError):
        standardwebhooks.Webhook(secret)
    with pytest.raises(ValueError, match="no usable webhook secret"):
        verify_webhook(secret, BODY, forged)
    with pytest.raises(ValueError, match="no usable webhook secret"):
        verify_webhook([secret, "whsec_"], BODY, forged)


def test_an_unset_secret_in_a_rotation_list_is_skipped() -> None:
    forged = signed_headers(b"", "msg_1")
    assert verify_webhook([SECRET, ""], BODY, forged) is False
    assert verify_webhook(["whsec_", SECRET], BODY, signed_headers(b"k" * 32, "msg_1")) is True


def test_a_missing_webhook_id_is_refused_like_standardwebhooks() -> None:
    headers = signed_headers(b"k" * 32, "")
    del headers["webhook-id"]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY, headers)
    assert verify_webhook(SECRET, BODY, headers) is False


def test_a_non_ascii_signature_is_not_verified_rather_than_raised() -> None:
    headers = {**signed_headers(b"k" * 32, "msg_1"), "webhook-signature": "v1,\u00e9\u00e9"}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY, headers)
    assert verify_webhook(SECRET, BODY, headers) is False


def test_a_secret_read_with_its_line_end_and_a_text_body_verify_like_standardwebhooks() -> None:
    """A secret read from a file or a mounted secret keeps its trailing newline, and some
    frameworks hand the body over as text: ``standardwebhooks`` verifies both, the client
    raised "no usable webhook secret" and TypeError."""
    headers = signed_headers(b"k" * 32, "msg_1")
    for secret in (SECRET + "\n", SECRET + "\r\n", SECRET + " "):
        standardwebhooks.Webhook(secret).verify(BODY, headers)
        assert verify_webhook(secret, BODY, headers), repr(secret)
        assert not verify_webhook(secret, BODY + b"x", headers)
    standardwebhooks.Webhook(SECRET).verify(BODY.decode(), headers)
    assert verify_webhook(SECRET, BODY.decode(), headers)
    with pytest.raises(ValueError, match="no usable webhook secret"):
        verify_webhook("whsec_\n", BODY, signed_headers(b"", "msg_1"))


def test_a_timestamp_too_large_for_a_float_is_not_verified_rather_than_raised() -> None:
    """Anybody can send a webhook-timestamp of 400 digits: ``standardwebhooks`` answers "not
    verified", the client raised OverflowError (a receiver's 500) comparing it with now."""
    headers = {**signed_headers(b"k" * 32, "msg_1"), "webhook-timestamp": "9" * 400}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY, headers)
    assert verify_webhook(SECRET, BODY, headers) is False


def test_a_stale_or_future_timestamp_is_not_verified_though_its_signature_is() -> None:
    for moved in (-301, 301):
        timestamp = int(time.time()) + moved
        headers = webhooks.sign([SECRET], "msg_1", timestamp, BODY)
        assert not verify_webhook(SECRET, BODY, headers), moved
        assert verify_webhook(SECRET, BODY, headers, tolerance=400), moved
