"""Canonical JSON and the chain's link: one byte string per event, reproducible anywhere.

This module is the specification a third party re-implements to verify an export (see
``audit/verify_export.py``, which does so with the standard library alone). It imports
nothing from Django.

A link's text is the event as a JSON object with its keys in sorted order and no white
space, strings escaped as ``json.dumps(..., ensure_ascii=False)`` escapes them::

    {"action":"call.submitted","actor_id":"3","actor_label":"support-bot",
     "actor_type":"agent","agent_name":"support-bot","call_id":"<uuid>"|null,
     "data":<DATA>,"id":41,"occurred_at":"2026-11-21T21:44:00.123456+00:00",
     "outcome":"pending","seq":17,"session_id":"run-1","tool_name":"send_email"}

where ``<DATA>`` is the event's data exactly as the database writes it out: PostgreSQL's
canonical text of the ``jsonb`` value (keys ordered by length then bytes, ``", "`` and
``": "`` between items; it is what ``data::text`` and every export print). Hashing that
text, rather than parsing and re-serialising the data, makes the walk over a million events
about twice as fast (see bench/bench_audit_verify.py) and still binds every byte of it.

``hash = sha256(prev_hash || link text)`` as lowercase hex; the first link's ``prev_hash``
is 64 zeros.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

GENESIS_HASH = "0" * 64

# The C-accelerated JSON string encoder; it escapes exactly the characters PostgreSQL's
# to_json(text) escapes (quote, backslash, control characters), nothing else.
_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


def canonical_json(value: object) -> bytes:
    """Sorted keys, no insignificant white space, UTF-8. Equal values give equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sha256_hex(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


# canonical.instant, rendered by PostgreSQL: the walk and the exports read the instant as
# text, which spares a datetime object per row. A test holds the two renderings equal.
INSTANT_SQL = (
    "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    " || CASE WHEN mod(date_part('microseconds', occurred_at)::int, 1000000) = 0 THEN ''"
    " ELSE to_char(occurred_at AT TIME ZONE 'UTC', '.US') END || '+00:00'"
)


def instant(moment: datetime) -> str:
    """An instant as the chain writes it: ISO 8601 in UTC, microseconds only when non-zero
    (``datetime.isoformat``), e.g. ``2026-11-21T21:44:00.123456+00:00``."""
    return moment.astimezone(UTC).isoformat()


def link_text(
    *,
    seq: int,
    id: int,
    occurred_at: str,
    action: str,
    outcome: str,
    actor_type: str,
    actor_id: str,
    actor_label: str,
    agent_name: str,
    tool_name: str,
    session_id: str,
    call_id: str | None,
    data_text: str,
) -> str:
    """The text one link's hash covers (see the module's docstring)."""
    s = _string
    return "".join(
        (
            '{"action":', s(action),
            ',"actor_id":', s(actor_id),
            ',"actor_label":', s(actor_label),
            ',"actor_type":', s(actor_type),
            ',"agent_name":', s(agent_name),
            ',"call_id":', s(call_id) if call_id else "null",
            ',"data":', data_text,
            ',"id":', str(id),
            ',"occurred_at":', s(occurred_at),
            ',"outcome":', s(outcome),
            ',"seq":', str(seq),
            ',"session_id":', s(session_id),
            ',"tool_name":', s(tool_name),
            "}",
        )
    )  # fmt: skip


def link_hash(prev_hash: str, text: str) -> str:
    """``sha256(prev_hash || link text)``, hex."""
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()
