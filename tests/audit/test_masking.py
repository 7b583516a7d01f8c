"""The detectors mask secrets and personal data, and leave ids, dates and numbers alone."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from audit.masking import mask_arguments, mask_text, mask_value


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("key sk_live_abcdefgh12345678", "secret"),
        ("key sk-ant-api03-abcdefghijklmnopqrstuvwx", "secret"),
        ("AKIAABCDEFGHIJKLMNOP", "secret"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123", "secret"),
        ("Authorization: Bearer abcdefghijklmnop1234", "secret"),
        ("password=hunter2xyz", "secret"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----", "secret"),
        ("card 4242 4242 4242 4242", "card"),
        ("card 4242-4242-4242-4242", "card"),
        ("4000056655665556", "card"),
        ("Ada.Lovelace@Example.com", "email"),
        ("call +44 20 7946 0958", "phone"),
        ("+15551234567", "phone"),
        ("020 7946 0958", "phone"),
        ("(555) 123-4567", "phone"),
        ("555-123-4567.", "phone"),
    ],
)
def test_it_masks(text: str, kind: str) -> None:
    assert f"[masked:{kind}:" in mask_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "call 3f2a1c2b-1111-2222-3333-444455556666",
        "from 192.168.100.200:8080",
        "at 2026-11-21T21:44:00.123456+00:00",
        "order 2024-06-01 ref 1234567890",
        "4242-4242-4242-4241",  # fails the Luhn check: not a card
        "amount 1,234,567.89 EUR and version 1.2.3",
        "token_cost 1200 tokens",
    ],
)
def test_it_leaves_alone(text: str) -> None:
    assert mask_text(text) == text


def test_equal_values_get_equal_fingerprints_and_masking_is_idempotent() -> None:
    once = mask_text("write to ada@example.com, then ADA@example.com")
    first, second = once.split(", then ")
    assert first.removeprefix("write to ") == second
    assert mask_text(once) == once


def test_secret_named_keys_are_masked_whole_and_keys_are_free_text_too() -> None:
    masked = mask_value({"api_key": "short", "ada@example.com": {"password": 1234}})
    assert masked["api_key"].startswith("[masked:secret:")
    [key] = [k for k in masked if k != "api_key"]
    assert key.startswith("[masked:email:")
    assert masked[key]["password"].startswith("[masked:secret:")


def test_a_tools_sensitive_fields_are_masked_whole_through_lists() -> None:
    arguments = {"people": [{"ssn": "123-45-6789"}, {"ssn": "987-65-4321"}], "note": "hi"}
    masked = mask_arguments(arguments, ["people.ssn"])
    assert all(p["ssn"].startswith("[masked:field:") for p in masked["people"])
    assert masked["note"] == "hi"


def every_detector(text: str) -> str:
    """mask_text without its shortcut: each detector over the text between the masks."""
    from audit import masking

    for detector in masking._DETECTORS:
        parts = masking._MARKER.split(text)
        text = "".join(
            part if i % 2 else detector(part, masking.masked) for i, part in enumerate(parts)
        )
    return text


PIECES = [
    "a", "Z", "_", "0", "7", "4242", " ", "-", ".", ":", "/", "+", "(", ")", "@", "=", "'",
    "\n", "example.com", "sk_live_", "abcdefgh12345678", "Bearer ", "password", "token",
    "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----", "4242 4242 4242 4242",
    "+44 20 7946 0958", "[masked:email:0123abcd]", "[masked:", "]", "ada@x.io",
]  # fmt: skip


@hypothesis.given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
@hypothesis.settings(max_examples=500, deadline=None)
def test_the_shortcut_for_text_without_findings_masks_exactly_as_every_detector(
    text: str,
) -> None:
    assert mask_text(text) == every_detector(text)
