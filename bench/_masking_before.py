"""audit/masking.py as it was before the detectors of issue 15 (commit c36674c), frozen here
so that bench/bench_masking.py can measure the new masking against the old in one run.
Not used by the product; do not fix anything in it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from django.conf import settings

from audit.canonical import canonical_json

# Keys whose values are secret whatever they look like.
SECRET_KEY_NAMES = re.compile(
    r"(?i)^(password|passwd|secret|client_secret|api[_-]?key|access[_-]?token|refresh[_-]?token"
    r"|token|authorization|auth|cookie|session[_-]?key|private[_-]?key|card[_-]?number|cvc|cvv)$"
)

_API_KEY = re.compile(
    r"\b(?:"
    r"sk_(?:live|test)_[A-Za-z0-9]{8,}"  # Stripe-style secret keys
    r"|(?:rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}"
    r"|sk-[A-Za-z0-9_-]{16,}"  # OpenAI/Anthropic-style keys
    r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|cst_[A-Za-z0-9]{6,}_[A-Za-z0-9_-]{16,}"  # Countersign agent tokens
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r")"
)
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{12,}")
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(password|passwd|secret|api[_-]?key|access[_-]?token|token)(\s*[=:]\s*)"
    r"(['\"]?)([^\s'\",;]{6,})"
)
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b")
_CARD_CANDIDATE = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
# Phone numbers: international (+CC ...), bracketed area codes, national trunk-prefixed and
# North American formats. A match may not touch another token's characters ("." ":" "-" "/"
# or a word character), so UUIDs, IP addresses, timestamps, dates and decimals are left
# alone; a bare run of digits (an order number) is not taken for a phone number.
_PHONE_EDGE_BEFORE = r"(?<![\w.:/+-])"
_PHONE_EDGE_AFTER = r"(?![\w:/]|[.-]\w)"
_PHONE = re.compile(
    _PHONE_EDGE_BEFORE
    + r"(?:"
    + r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,5}){1,4}"
    + r"|\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,5}"
    + r"|0\d{1,4}[ .-]\d{3,4}[ .-]?\d{3,5}"
    + r"|\d{3}[ .-]\d{3}[ .-]\d{4}"
    + r")"
    + _PHONE_EDGE_AFTER
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# What a masked value looks like; detectors never look inside one.
_MARKER = re.compile(r"(\[masked:[a-z]+:[0-9a-f]{8}\])")


@cache
def _mask_key(secret: str) -> bytes:
    return hashlib.sha256(b"countersign-mask:" + secret.encode()).digest()


def fingerprint(value: str) -> str:
    """A short keyed hash: equal inputs give equal fingerprints; nothing else leaks."""
    secret = getattr(settings, "AUDIT_MASK_KEY", "") or settings.SECRET_KEY
    return hmac.new(_mask_key(secret), value.encode(), hashlib.sha256).hexdigest()[:8]


def masked(kind: str, value: str) -> str:
    return f"[masked:{kind}:{fingerprint(value)}]"


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2 == 1:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def _mask_cards(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return masked("card", digits)
        return match.group(0)

    return _CARD_CANDIDATE.sub(replace, text)


def _mask_phones(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if 8 <= len(digits) <= 15:
            return masked("phone", digits)
        return match.group(0)

    return _PHONE.sub(replace, text)


_DETECTORS: list[Callable[[str], str]] = [
    lambda text: _PRIVATE_KEY.sub(lambda m: masked("secret", m.group(0)), text),
    lambda text: _API_KEY.sub(lambda m: masked("secret", m.group(0)), text),
    lambda text: _BEARER.sub(lambda m: f"{m.group(1)} {masked('secret', m.group(0))}", text),
    lambda text: _SECRET_ASSIGNMENT.sub(
        lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{masked('secret', m.group(4))}", text
    ),
    _mask_cards,
    lambda text: _EMAIL.sub(lambda m: masked("email", m.group(0).lower()), text),
    _mask_phones,
]


# Every detector's pattern. Text in which none of them matches anywhere is left as it is by
# every detector, so mask_text returns it at once: most of what is audited (keys, names,
# statuses, ids) is such text, and searching is cheaper than splitting around markers.
# (A pattern that matches nowhere in the text matches in no part between markers either:
# the markers' brackets are neither word characters nor digits, dots, colons or dashes.)
_PATTERNS = (_PRIVATE_KEY, _API_KEY, _BEARER, _SECRET_ASSIGNMENT, _CARD_CANDIDATE, _EMAIL, _PHONE)


def mask_text(text: str) -> str:
    """Mask every secret or personal datum the detectors find in free text.

    Each detector sees only the text between masks already made, so a mask's fingerprint is
    never taken for a secret, a card or a phone number, and masking is idempotent.
    """
    if not text:
        return text
    if not any(pattern.search(text) for pattern in _PATTERNS):
        return text
    for detector in _DETECTORS:
        parts = _MARKER.split(text)
        # re.split with a group alternates: text, marker, text, marker, ..., text
        text = "".join(part if i % 2 else detector(part) for i, part in enumerate(parts))
    return text


def mask_value(value: Any) -> Any:
    """Mask detector hits anywhere inside a JSON-like value, and secret-named keys whole."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            # Keys are free text too (a map keyed by e-mail address, say).
            name = mask_text(key) if isinstance(key, str) else key
            if isinstance(key, str) and SECRET_KEY_NAMES.match(key) and item not in (None, ""):
                result[name] = masked("secret", _as_text(item))
            else:
                result[name] = mask_value(item)
        return result
    if isinstance(value, list | tuple):
        return [mask_value(item) for item in value]
    return value


def mask_fields(value: Any, sensitive_fields: Iterable[str]) -> Any:
    """Mask the values at the given dotted paths whole (``card.number``; lists are walked)."""
    for path in sensitive_fields:
        value = _mask_path(value, [part for part in path.split(".") if part])
    return value


def mask_arguments(arguments: Any, sensitive_fields: Iterable[str] = ()) -> Any:
    """Tool arguments as they may be shown or stored: sensitive fields, then detectors."""
    return mask_value(mask_fields(arguments, sensitive_fields))


def _mask_path(value: Any, parts: list[str]) -> Any:
    if not parts:
        return value if value in (None, "") else masked("field", _as_text(value))
    if isinstance(value, list):
        return [_mask_path(item, parts) for item in value]
    if isinstance(value, dict) and parts[0] in value:
        return {**value, parts[0]: _mask_path(value[parts[0]], parts[1:])}
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else canonical_json(value).decode()
