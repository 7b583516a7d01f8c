"""The detectors mask secrets and personal data, and leave ids, dates and numbers alone."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from audit import masking
from audit.display import partial
from audit.masking import (
    cut_short,
    field_path,
    mask_arguments,
    mask_fields,
    mask_text,
    mask_value,
    masked,
    path_parts,
)


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
    return masking._mask_all(text, masking.masked)


PIECES = [
    "a", "Z", "_", "0", "7", "4242", "4111", "1111", " ", "-", ".", ":", "/", "+", "(", ")",
    "@", "=", "'", '"', "\\", "&", "?", ";", "%", "%40", "%20", "%2B", "\n", "example.com",
    "sk_live_", "abcdefgh12345678", "Bearer ", "password", "token", "api_key", "tel:",
    "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----", "4242 4242 4242 4242",
    "4111.1111.1111.1111", "+44 20 7946 0958", "(555) 123-4567", "2026-11-21", "eyJhbGciOiJIUzI1NiJ9",
    "[masked:email:0123abcd]", "[masked:", "]", "ada@x.io", "a***@example.com", "•••• 1111",
    "0123456789abcdef", "ghp_", "AKIA", "xoxb-1-", "://u:p@h", "_authToken=", "Pwd", "SECRET",
    "\u00a0", "\u200b", "DE89 3704 0044 0532 0130 00", "GB29NWBK60161331926819", "[", ", ",
    "Authorization: ApiKey ", "8Q~", "ya29.",
]  # fmt: skip


@hypothesis.given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
@hypothesis.settings(max_examples=500, deadline=None)
def test_the_shortcut_for_text_without_findings_masks_exactly_as_every_detector(
    text: str,
) -> None:
    assert mask_text(text) == every_detector(text)


@hypothesis.given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
@hypothesis.settings(max_examples=500, deadline=None)
def test_masking_twice_changes_nothing_even_for_values_glued_together(text: str) -> None:
    once = mask_text(text)
    assert mask_text(once) == once


@hypothesis.given(st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join))
@hypothesis.settings(max_examples=500, deadline=None)
def test_partly_shown_values_are_not_found_again(text: str) -> None:
    """Words apart (a partly shown e-mail glued to another "@" can be read anew)."""
    once = mask_text(text, render=partial)
    assert mask_text(once, render=partial) == once
    assert mask_text(once) == once


def test_the_default_renderer_is_the_keyed_hash_marker() -> None:
    text = "ada@example.com paid with 4111 1111 1111 1111, password: hunter2, +44 20 7946 0958"
    assert mask_text(text) == mask_text(text, render=masked)
    assert mask_text(text) == (
        f"{masked('email', 'ada@example.com')} paid with {masked('card', '4111111111111111')}, "
        f"password: {masked('secret', 'hunter2')}, {masked('phone', '442079460958')}"
    )


def test_every_replacement_goes_through_the_renderer_with_its_kind() -> None:
    seen: list[tuple[str, str]] = []

    def spy(kind: str, value: str) -> str:
        seen.append((kind, value))
        return "<>"

    arguments = {
        "to": "ada@example.com",
        "note": "call +44 20 7946 0958 about 4111.1111.1111.1111",
        "api_key": "k-123",
        "ssn": "123-45-6789",
    }
    shown = mask_arguments(arguments, ["ssn"], render=spy)
    assert shown == {"to": "<>", "note": "call <> about <>", "api_key": "<>", "ssn": "<>"}
    assert sorted(seen) == [
        ("card", "4111111111111111"),
        ("email", "ada@example.com"),
        ("field", "123-45-6789"),
        ("phone", "442079460958"),
        ("secret", "k-123"),
    ]


def test_mask_value_and_mask_fields_leave_masks_as_they_are() -> None:
    value = {"password": "hunter2", "card": {"number": "4111 1111 1111 1111"}, "n": 1}
    once = mask_value(mask_fields(value, ["card.number"]))
    assert once["password"].startswith("[masked:secret:")
    assert once["card"]["number"].startswith("[masked:field:")
    assert mask_value(mask_fields(once, ["card.number"])) == once
    assert mask_arguments(once, ["card.number"]) == once


def test_secret_names_may_have_a_prefix_but_nothing_after() -> None:
    masked_value = mask_value(
        {"db_password": "x", "X-Api-Key": "y", "webhook_secret": "z", "token_cost": 3, "key": "k"}
    )
    assert [k for k, v in masked_value.items() if str(v).startswith("[masked:secret:")] == [
        "db_password",
        "X-Api-Key",
        "webhook_secret",
    ]


def test_camel_case_secret_names_are_masked_whole_too() -> None:
    """JSON from JavaScript names its secrets accessToken, refreshToken, clientSecret: they
    were kept in clear (apiKey alone was masked)."""
    names = ["accessToken", "refreshToken", "clientSecret", "userPassword", "ApiSecret", "idToken"]
    plain = ["maxTokens", "tokenCount", "inputTokens", "secretName", "OAuth", "passwordPolicy"]
    masked_value = mask_value({name: "opaque-value-123" for name in names + plain})
    assert [k for k, v in masked_value.items() if v != "opaque-value-123"] == names


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("card.number", ["card", "number"]),
        ("meta.card\\.holder", ["meta", "card.holder"]),
        ("a\\b.c", ["a\\b", "c"]),  # only a dot is escaped: paths written before read the same
    ],
)
def test_a_masked_field_path_writes_a_dot_in_a_name_escaped(path: str, parts: list[str]) -> None:
    assert path_parts(path) == parts
    assert path_parts(field_path(parts)) == parts


def test_a_name_that_holds_a_dot_is_masked_and_not_the_path_it_reads_like() -> None:
    held = {"meta": {"card.holder": "Ann", "card": {"holder": "Bob"}}}
    masked_once = mask_fields(held, ["meta.card\\.holder"])
    assert masked_once["meta"]["card"] == {"holder": "Bob"}
    assert masked_once["meta"]["card.holder"] != "Ann"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        # A Standard Webhooks signing secret (what rotate_webhook_secret prints), base64 "+/=".
        ("signing with whsec_MfKQ9r8GKYq+TwjUPD8ILPZIo2La/aSw== now", "MfKQ9r8GKYq+TwjUPD8ILPZ"),
        # Django's session and CSRF cookies quoted outside a Cookie header: a request's
        # cookies written out, a curl line's --cookie.
        ("cookies sessionid=8f0k2l3m4n5o6p7q8r9s0t1u2v3w4x5y; theme=dark", "8f0k2l3m4n5o6p7q"),
        ("--cookie csrftoken=Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56", "Ab12Cd34Ef56Gh78"),
        ("COOKIES={'sessionid': 'x1y2z3w4v5u6t7s8', 'csrftoken': 'q9'}", "x1y2z3w4v5u6t7s8"),
    ],
)
def test_webhook_secrets_and_djangos_cookies_are_masked(text: str, secret: str) -> None:
    assert secret not in mask_text(text)
    assert "[masked:secret:" in mask_text(text)


def test_an_agents_mcp_session_id_is_no_django_session_cookie() -> None:
    """MCP's own ``sessionId`` and Countersign's ``session_id`` are ids, shown in the trail."""
    text = "sessionId=run-42 session_id=run-42"
    assert mask_text(text) == text


def test_headers_as_name_value_pairs_or_entries_are_masked_as_a_maps_are() -> None:
    """Headers, form fields and settings written as [name, value] pairs (httpx, WSGI) or as
    {"name": ..., "value": ...} entries (HAR files, Postman): a value without a key's shape
    under a secret's name was kept in clear, where {"X-Api-Key": ...} masked it."""
    masked_value = mask_value(
        {
            "headers": [["Accept", "*/*"], ["X-Api-Key", "opaque-1234"], ("authorization", "k")],
            "har": [
                {"name": "Authorization", "value": "ApiKey opaque-5678"},
                {"name": "Accept", "value": "*/*"},
            ],
            "postman": [{"key": "client_secret", "value": "opaque-9012", "type": "text"}],
            "tags": ["password", "reset"],  # a list of words, not of pairs
        }
    )
    assert masked_value["headers"][0] == ["Accept", "*/*"]
    assert [name for name, _ in masked_value["headers"][1:]] == ["X-Api-Key", "authorization"]
    assert all(value.startswith("[masked:secret:") for _, value in masked_value["headers"][1:])
    assert masked_value["har"][0]["name"] == "Authorization"
    assert masked_value["har"][0]["value"] == masked("secret", "ApiKey opaque-5678")
    assert masked_value["har"][1] == {"name": "Accept", "value": "*/*"}
    assert masked_value["postman"][0]["value"].startswith("[masked:secret:")
    assert masked_value["postman"][0]["type"] == "text"
    assert masked_value["tags"] == ["password", "reset"]
    assert "opaque" not in str(masked_value)
    assert mask_value(masked_value) == masked_value


def test_a_secret_name_is_read_as_it_shows() -> None:
    """A name with a zero-width character in it, or written in full-width letters, reads as
    "password" on every page, and its value was kept in clear; "pass" alone names a
    password too (SMTP settings: {"user": ..., "pass": ...})."""
    names = [
        "pass\u200bword",
        "api\u2060_key",
        "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44",
        "pass",
    ]
    masked_value = mask_value(
        {name: "opaque-value-123" for name in [*names, "passes", "by\u200bpass"]}
    )
    assert [k for k, v in masked_value.items() if v != "opaque-value-123"] == names


@pytest.mark.parametrize(
    "written",
    [
        "Zebulon.Canary@Example.org",
        "4000 0566 5566 5556",
        "+44 20 7946 0123",
        "sk_live_CanaryKey9Z8Y7X6W5V4U",
        "DE89 3704 0044 0532 0130 00",
        "password: hunter2 two",
    ],
)
def test_a_text_cut_short_keeps_no_part_of_what_masking_the_whole_masks(written: str) -> None:
    """Wherever the cut falls, masking what is kept gives the start of what masking the whole
    gives: nothing cut through is left for the detectors to miss."""
    text = f"refused: {written} is not known"
    for limit in range(len("refused: "), len(text)):
        kept = cut_short(text, limit)
        assert text.startswith(kept) and len(kept) <= limit
        assert mask_text(text).startswith(mask_text(kept)), kept
    assert cut_short(text, len(text)) == text
