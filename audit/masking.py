"""Masking of secrets and personal data before anything is written down.

Two layers:

* fields a tool's policy marks sensitive (``sensitive_fields``: dotted paths into the
  arguments) are masked whole, whatever they contain;
* detectors (``audit.detectors``) find API keys, tokens, secret assignments, private keys,
  card numbers (Luhn-checked), IBANs (checked), e-mail addresses and phone numbers anywhere
  in free text, also inside URL-encoded text, and mask just the match.

How a masked value is shown is the renderer's choice, ``render(kind, value) -> str``, passed
to every function here. The default, ``masked``, keeps a short keyed hash
(``[masked:email:3f9a1c2b]``) so that equal values can be correlated across events without
being readable; the key comes from the settings, so the hash cannot be reversed by guessing
common values offline. The reviewer's display forms (``a***@example.com``, ``•••• 1111``)
are the ``partial`` renderer in ``audit.display``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any
from urllib.parse import unquote, unquote_plus

from django.conf import settings

from audit.canonical import canonical_json
from audit.detectors import (
    PERSONAL_DATA,
    SECOND_READS,
    SECRET_NAME,
    SECRETS,
    Budget,
    Detector,
    Kind,
    luhn_valid,
)

__all__ = [
    "SECRET_KEY_NAMES",
    "Kind",
    "Renderer",
    "cut_short",
    "fingerprint",
    "is_masked",
    "luhn_valid",
    "mask_arguments",
    "mask_fields",
    "mask_text",
    "mask_value",
    "masked",
    "unique_key",
]

Renderer = Callable[[str, str], str]
"""``render(kind, value)``: how a masked value of that kind is shown in place of ``value``."""

# Keys whose values are secret whatever they look like (the same names as in free text).
SECRET_KEY_NAMES = re.compile(rf"(?i)^{SECRET_NAME}$")

# What a masked value looks like; detectors never look inside one.
_MARKER = re.compile(r"(\[masked:[a-z]+:[0-9a-f]{8}\])")

# A run of URL-encoded text: a query parameter, a path, a form body. "+" is a space in a form
# value (``q=4111+1111+...``), so a ``name=value`` holding one counts too.
_URL_STOP = r"\s&?#\"'<>"
_URL_ENCODED = re.compile(
    # From the start of a run only, so that a long run is read once.
    rf"(?<![^{_URL_STOP}])"
    rf"(?:[^{_URL_STOP}]*%[0-9A-Fa-f]{{2}}[^{_URL_STOP}]*"
    rf"|[^{_URL_STOP}=]+=[^{_URL_STOP}]*\+[^{_URL_STOP}]*)"
)


@cache
def _mask_key(secret: str) -> bytes:
    return hashlib.sha256(b"countersign-mask:" + secret.encode()).digest()


def fingerprint(value: str) -> str:
    """A short keyed hash: equal inputs give equal fingerprints; nothing else leaks."""
    secret = getattr(settings, "AUDIT_MASK_KEY", "") or settings.SECRET_KEY
    return hmac.new(_mask_key(secret), value.encode(), hashlib.sha256).hexdigest()[:8]


def keyed_digest(digest: str) -> str:
    """A hash of masked data (a call's arguments, the state a reviewer was shown), as the
    trail keeps it: keyed like the fingerprints, so two events about the same arguments
    still show the same digest, while whoever reads the trail (an auditor, an export's
    reader) cannot try guesses of a masked value against it offline, as against the bare
    SHA-256 of the rest, which the trail shows. "" stays ""."""
    if not digest:
        return ""
    secret = getattr(settings, "AUDIT_MASK_KEY", "") or settings.SECRET_KEY
    return hmac.new(_mask_key(secret), b"digest:" + digest.encode(), hashlib.sha256).hexdigest()


def masked(kind: str, value: str) -> str:
    """The default renderer: ``[masked:<kind>:<keyed hash of value>]``."""
    return f"[masked:{kind}:{fingerprint(value)}]"


def is_masked(value: Any) -> bool:
    """Whether ``value`` is exactly one keyed-hash marker (so masking leaves it as it is)."""
    return isinstance(value, str) and _MARKER.fullmatch(value) is not None


# Detectors see only the text between masks already made, in this order: secrets first (an
# assignment takes a quoted value whole, a key found inside it included), then URL-encoded
# runs (decoded and masked as a whole, after the secret detectors have masked a raw
# ``password=...`` to its end), then personal data.
def _may_be_url_encoded(text: str, folded: str) -> bool:
    return "%" in text or ("=" in text and "+" in text)


_URL_DETECTOR = Detector("url_encoded", _may_be_url_encoded, lambda text, budget: [])
_PIPELINE = (*SECRETS, _URL_DETECTOR, *PERSONAL_DATA)


def mask_text(text: str, *, render: Renderer = masked) -> str:
    """Mask every secret or personal datum the detectors find in free text.

    Each detector sees only the text between masks already made (``[masked:...]`` markers
    in the input included), so a mask is never taken for a secret, a card or a phone number,
    and masking with the default renderer is idempotent.
    """
    return _mask_text(text, render, Budget())


def _mask_text(text: str, render: Renderer, budget: Budget) -> str:
    if not text or text in _PLAIN:
        return text
    # Most audited text (keys, names, statuses, ids) leaves no detector anything to look
    # at, and is returned at once.
    detectors = _detectors_for(text)
    if not detectors:
        _remember_plain(text)
        return text
    return _mask_all(text, render, detectors, budget)


# Short texts no detector would look at, as asked before: the same keys, names and statuses
# come back in every event, and asking every detector again was a third of the time an
# event takes to mask. Only such texts are kept (a text a detector may find something in
# never is), in a set bounded in size and emptied when full; reads and adds are atomic.
_PLAIN: set[str] = set()
_PLAIN_MAX_TEXTS = 20_000
_PLAIN_MAX_LENGTH = 200


def _remember_plain(text: str) -> None:
    if len(text) <= _PLAIN_MAX_LENGTH:
        if len(_PLAIN) >= _PLAIN_MAX_TEXTS:
            _PLAIN.clear()
        _PLAIN.add(text)


def _detectors_for(text: str) -> list[Detector]:
    """The detectors that could find something somewhere in ``text`` (see may_find)."""
    folded = text.casefold()
    return [d for d in _PIPELINE if d.may_find(text, folded)]


Piece = tuple[bool, str]  # (done, text): done pieces are masks, already rendered
# Rounds of every detector over the text left between masks: real text needs two at most
# (the second finds nothing); a long soup of glued values is not read without end.
_ROUNDS = 4


def _mask_all(
    text: str,
    render: Renderer,
    detectors: Iterable[Detector] = _PIPELINE,
    budget: Budget | None = None,
) -> str:
    budget = budget or Budget()
    # The payload's matcher runs go on being spent; second reads are counted for each text.
    budget.second_reads = SECOND_READS
    return "".join(piece for _, piece in _masked_pieces(text, render, detectors, budget))


def _masked_pieces(
    text: str, render: Renderer, detectors: Iterable[Detector], budget: Budget
) -> list[Piece]:
    if "[masked:" in text:
        pieces = [(i % 2 == 1, part) for i, part in enumerate(_MARKER.split(text)) if part]
    else:
        pieces = [(False, text)]
    masks = sum(done for done, _ in pieces)
    for _ in range(_ROUNDS):
        pieces = _run(pieces, render, detectors, budget)
        if sum(done for done, _ in pieces) == masks:
            break
        # New masks change what stands next to what: a phone number glued to the one before
        # it ("...0958+44 20 ...") touched another token and was left, and stands alone once
        # that one is masked. The text left is masked again now, as a second masking would
        # do it, so that masking twice changes nothing.
        masks = sum(done for done, _ in pieces)
        wanted = {d for done, piece in pieces if not done for d in _detectors_for(piece)}
        detectors = [d for d in _PIPELINE if d in wanted]
    return pieces


def _run(
    pieces: list[Piece], render: Renderer, detectors: Iterable[Detector], budget: Budget
) -> list[Piece]:
    """Each detector in turn, over the text between the masks made so far."""
    for detector in detectors:
        searched: list[Piece] = []
        for done, piece in pieces:
            at = 0
            for start, end, shown in [] if done else _find(detector, piece, render, budget):
                _append(searched, (False, piece[at:start]))
                for part in shown:
                    _append(searched, part)
                at = end
            _append(searched, (done, piece[at:]) if at else (done, piece))
        pieces = searched
    return pieces


def _append(pieces: list[Piece], piece: Piece) -> None:
    """Text next to text is one text (a URL-encoded run's decoded remains and what follows
    it), as it is when masked again."""
    done, text = piece
    if not text:
        return
    if not done and pieces and not pieces[-1][0]:
        pieces[-1] = (False, pieces[-1][1] + text)
    else:
        pieces.append(piece)


def _find(
    detector: Detector, text: str, render: Renderer, budget: Budget
) -> list[tuple[int, int, list[Piece]]]:
    if detector is _URL_DETECTOR:
        return _find_url_encoded(text, render, budget)
    found = detector.find(text, budget)
    return [(f.start, f.end, [(True, render(f.kind, f.value))]) for f in found]


def _find_url_encoded(
    text: str, render: Renderer, budget: Budget
) -> list[tuple[int, int, list[Piece]]]:
    """URL-encoded runs whose decoded text holds something to mask are replaced by that text,
    masked (``to=alice%40example.com`` -> ``to=[masked:email:...]``): a fingerprint is taken
    of the decoded value, so it matches the one of the same value written plainly. Runs with
    nothing to mask stay as they were."""
    found = []
    for match in _URL_ENCODED.finditer(text):
        raw = match.group(0)
        decoded = unquote_plus(raw) if "=" in raw else unquote(raw)
        detectors = _detectors_for(decoded)
        if decoded == raw or not detectors or not budget.decodings:
            continue
        # Decodes again if it was encoded twice, a few times over at most.
        budget.decodings -= 1
        try:
            pieces = _masked_pieces(decoded, render, detectors, budget)
        finally:
            budget.decodings += 1
        if any(done for done, _ in pieces):
            found.append((match.start(), match.end(), pieces))
    return found


def mask_value(value: Any, *, render: Renderer = masked) -> Any:
    """Mask detector hits anywhere inside a JSON-like value, and secret-named keys whole.

    All its strings share one budget (``audit.detectors.Budget``): many small strings cost no
    more than one long one."""
    return _mask_value(value, render, Budget())


def _mask_value(value: Any, render: Renderer, budget: Budget) -> Any:
    if isinstance(value, str):
        return _mask_text(value, render, budget)
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        # An entry that names its value ({"name": "X-Api-Key", "value": ...}, as HAR files,
        # Postman and many APIs write headers, form fields and settings): the value is the
        # named one's, secret if the name is.
        named = value.get("name", value.get("key"))
        for key, item in value.items():
            # Keys are free text too (a map keyed by e-mail address, say). Two may then read
            # alike ("Ada@..." and "ada@..." have one fingerprint): told apart, never one
            # entry in the other's place.
            name = (
                unique_key(_mask_text(key, render, budget), result) if isinstance(key, str) else key
            )
            secret = _is_secret_name(key) or (key == "value" and _is_secret_name(named))
            result[name] = _mask_entry(item, secret, render, budget)
        return result
    if isinstance(value, list | tuple):
        # Headers, form fields and query parameters as a list of name-value pairs
        # ([["Authorization", "ApiKey x"], ["Accept", "*/*"]], as httpx, WSGI and HAR's
        # tools hold them): a pair whose name is a secret's is masked as a map's entry is.
        if value and all(_is_pair(item) for item in value):
            return [
                [
                    _mask_text(name, render, budget),
                    _mask_entry(item, _is_secret_name(name), render, budget),
                ]
                for name, item in value
            ]
        return [_mask_value(item, render, budget) for item in value]
    return value


def _is_secret_name(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    if not name.isascii():
        # A name read as it shows: without hidden characters ("pass\u200bword"), and in
        # the letters a full-width one stands for ("password" in full-width letters).
        name = unicodedata.normalize("NFKC", "".join(c for c in name if not _hidden(c)))
    return SECRET_KEY_NAMES.match(name) is not None


def _hidden(char: str) -> bool:
    return unicodedata.category(char) == "Cf" or char in "\u034f\u115f\u1160\u3164\uffa0"


def _is_pair(item: Any) -> bool:
    return isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)


def _mask_entry(item: Any, secret: bool, render: Renderer, budget: Budget) -> Any:
    """The value of an entry, masked whole when its name is a secret's."""
    if secret and item not in (None, "") and not is_masked(item):
        return render(Kind.SECRET, _as_text(item))
    return _mask_value(item, render, budget)


def unique_key(name: str, taken: Mapping[str, Any]) -> str:
    """``name``, or ``name (2)``, ``name (3)``... when an earlier key of the object is shown
    so already: keys that read alike once masked (or once hidden characters are written out)
    must not take each other's place."""
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


_UNESCAPED_DOT = re.compile(r"(?<!\\)\.")


def path_parts(path: str) -> list[str]:
    """The names of a masked field's dotted path: ``card.number`` is ["card", "number"]. A
    dot inside a name is written ``\\.``: the property ``card.number`` of ``meta`` is
    ``meta.card\\.number``. (Only a dot is escaped, so every path written before reads as it
    did; a name that ends in a backslash cannot have a member named after it.)"""
    return [part.replace("\\.", ".") for part in _UNESCAPED_DOT.split(path) if part]


def field_path(parts: Iterable[str]) -> str:
    """The dotted path of these names, as ``path_parts`` reads it."""
    return ".".join(part.replace(".", "\\.") for part in parts)


def mask_fields(value: Any, sensitive_fields: Iterable[str], *, render: Renderer = masked) -> Any:
    """Mask the values at the given dotted paths whole (``card.number``; lists are walked;
    ``path_parts`` reads a path)."""
    for path in sensitive_fields:
        value = _mask_path(value, path_parts(path), render)
    return value


def mask_arguments(
    arguments: Any, sensitive_fields: Iterable[str] = (), *, render: Renderer = masked
) -> Any:
    """Tool arguments as they may be shown or stored: sensitive fields, then detectors."""
    return mask_value(mask_fields(arguments, sensitive_fields, render=render), render=render)


def _mask_path(value: Any, parts: list[str], render: Renderer) -> Any:
    if not parts:
        if value in (None, "") or is_masked(value):
            return value
        return render(Kind.FIELD, _as_text(value))
    if isinstance(value, list):
        return [_mask_path(item, parts, render) for item in value]
    if isinstance(value, dict) and parts[0] in value:
        return {**value, parts[0]: _mask_path(value[parts[0]], parts[1:], render)}
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else canonical_json(value).decode()


# A secret or an address the cut runs through is looked for this far past it (a JWT is long).
_CUT_LOOKAHEAD = 1_000
# Cuts moved back, token by token, before giving up on the text (an empty cut): a card in
# groups takes five, most text one; each masks what it keeps.
_CUT_STEPS = 8
# Where a token starts: after white space, a quote or a bracket.
_TOKEN_START = re.compile(r"[\s\"'`,;()\[\]{}<>]")


def cut_short(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, or fewer: never part of a secret or of
    personal data the detectors would find in the whole (cut, they might not know it, and
    what is kept of it would be written down in clear: "zebulon.canary@exa", "4111 1111
    1111 11"); the cut goes back before it, to where a token starts.

    A cut is kept when masking what it keeps gives the start of what masking the whole
    gives: nothing cut through was masked there, whatever its kind and however it is
    written (a card's spaces, an address's capitals)."""
    if len(text) <= limit:
        return text
    window = text[: limit + _CUT_LOOKAHEAD]
    whole = mask_text(window)
    end = limit
    for _ in range(_CUT_STEPS):
        if whole.startswith(mask_text(window[:end])):
            return window[:end]
        end = max((m.start() for m in _TOKEN_START.finditer(window, 0, end - 1)), default=0)
    return ""


# pydantic quotes what it refused, cut to its first and last characters ("[type=...,
# input_value='{\'key\': \'sk_live_...NOPQ\'}', input_type=dict]"), to the end of its line.
# An upstream's answer quoting its credential back, say: cut short, the credential no longer
# reads as one to the detectors, nor as the whole value an upstream's scrub takes out.
_PYDANTIC_INPUT = re.compile(r"input_value=.*, input_type=")


def without_quoted_input(text: str) -> str:
    """``text`` (a pydantic error, a traceback) without what pydantic quoted of the value it
    refused; the error's type and place are kept."""
    return _PYDANTIC_INPUT.sub("input_value=..., input_type=", text)
