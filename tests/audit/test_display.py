"""The reviewer's display forms: the ``partial`` renderer, alone and through masking."""

from __future__ import annotations

import pytest

from audit.display import partial
from audit.masking import mask_arguments, mask_text, mask_value, masked
from tests.audit.test_detectors import ALL_CASES


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("email", "ada.lovelace@example.com", "a***@example.com"),
        ("email", "b@mail.example.co.uk", "b***@mail.example.co.uk"),
        ("email", "josé@correo.es", "j***@correo.es"),
        ("phone", "442079460958", "•••58"),
        ("phone", "5551234567", "•••67"),
        ("card", "4111111111111111", "•••• 1111"),
        ("card", "378282246310005", "•••• 0005"),
        ("secret", "hunter2", masked("secret", "hunter2")),
        ("field", "123-45-6789", masked("field", "123-45-6789")),
        ("username", "hunter2", masked("username", "hunter2")),
    ],
)
def test_partial_forms(kind: str, value: str, expected: str) -> None:
    assert partial(kind, value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to Ada@Example.com", "write to a***@example.com"),
        ("call +44 20 7946 0958 now", "call •••58 now"),
        ("card 4111.1111.1111.1111 declined", "card •••• 1111 declined"),
        ('Password = "hunter2 two"', f'Password = "{masked("secret", "hunter2 two")}"'),
        ("GET /?to=alice%40example.com HTTP/1.1", "GET /?to=a***@example.com HTTP/1.1"),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_masking_with_the_partial_renderer(text: str, expected: str) -> None:
    assert mask_text(text, render=partial) == expected


def test_a_sensitive_field_and_a_secret_named_key_show_only_the_marker() -> None:
    shown = mask_arguments(
        {"card": "4111 1111 1111 1111", "token": "abc", "note": "card 4111 1111 1111 1111"},
        ["card"],
        render=partial,
    )
    assert shown == {
        "card": masked("field", "4111 1111 1111 1111"),
        "token": masked("secret", "abc"),
        "note": "card •••• 1111",
    }


@pytest.mark.parametrize("text", [text for text, _ in ALL_CASES])
def test_a_partly_shown_value_is_not_detected_again(text: str) -> None:
    """Masking twice, with either renderer second, changes nothing: ``a***@example.com``,
    ``•••• 1111`` and ``•••58`` are not taken for an address, a card or a phone number."""
    once = mask_text(text, render=partial)
    assert mask_text(once, render=partial) == once
    assert mask_text(once) == once


def test_values_already_masked_for_the_trail_show_as_they_are() -> None:
    """The trail stores markers; showing a stored event with the display forms keeps them."""
    stored = mask_value({"to": "ada@example.com", "reasoning": "card 4111 1111 1111 1111"})
    assert mask_value(stored, render=partial) == stored
