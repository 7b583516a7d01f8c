"""Walking the chain: the first broken link, in constant memory.

The walk reads the sealed events in ``seq`` order through a server-side cursor and, for
each, checks that ``seq`` follows the previous one (nothing removed or reordered), that
``prev_hash`` is the previous link's hash, and that ``hash`` is the hash of the event's own
content (nothing altered). The anchor file is streamed beside it, so a chain rewritten end
to end (every hash recomputed) is caught at the first anchored ``seq`` it changed, and a
removed tail at an anchored ``seq`` the chain no longer reaches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone
from psycopg.errors import QueryCanceled

from audit import anchor
from audit.canonical import GENESIS_HASH, INSTANT_SQL, instant
from audit.canonical import _string as canonical_string
from audit.chain import SEAL_COLUMNS, chain_head, with_data_text
from audit.log import record
from audit.models import AuditEvent

FETCH = 5000


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    unsealed: int = 0
    anchors_checked: int = 0
    last_anchor: dict[str, Any] | None = None
    broken_seq: int | None = None
    broken_id: int | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    # The walk did not reach the head (the database cut it short): no verdict either way.
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_WALK_COLUMNS = (
    # The instant and the call id as PostgreSQL renders them, exactly as canonical.instant
    # and str(UUID) do, which spares a datetime and a UUID object per row.
    f"seq, prev_hash, hash, id, {INSTANT_SQL}, "
    "action, outcome, actor_type, actor_id, actor_label, agent_name, tool_name, session_id, "
    "call_id::text, data::text"
)


_WALK_TYPES = ["int8", "text", "text", "int8", *["text"] * 11]


def _rows_postgresql(upto_seq: int | None) -> Iterator[tuple[Any, ...]]:
    """Streamed by COPY in binary: the server sends rows as fast as it reads them and
    psycopg decodes them in C; this process holds one row at a time."""
    upto = "" if upto_seq is None else f" AND seq <= {int(upto_seq)}"
    with connection.cursor() as cursor:
        statement = (
            f"COPY (SELECT {_WALK_COLUMNS} FROM audit_auditevent"  # noqa: S608 - constants
            f" WHERE seq IS NOT NULL{upto} ORDER BY seq) TO STDOUT (FORMAT BINARY)"
        )
        cancelled = False
        try:
            with cursor.cursor.copy(statement) as copy:
                copy.set_types(_WALK_TYPES)
                try:
                    yield from copy.rows()
                except GeneratorExit:
                    # The walk stopped at a broken link. Outside a transaction, cancel the
                    # COPY; inside one a cancel would abort the caller's transaction, so
                    # read the rest and drop it.
                    if connection.get_autocommit():
                        cancelled = True
                        cursor.cursor.connection.cancel_safe()
                    for _ in copy:
                        pass
                    raise
        except QueryCanceled:
            # Only the cancel sent just above ends the walk quietly. Any other (a statement
            # timeout, an operator's pg_cancel_backend) cut it short: the caller must know.
            if not cancelled:
                raise


def _rows_portable(upto_seq: int | None) -> Iterator[tuple[Any, ...]]:
    sealed = AuditEvent.objects.filter(seq__isnull=False)
    if upto_seq is not None:
        sealed = sealed.filter(seq__lte=upto_seq)
    rows = (
        with_data_text(sealed)
        .order_by("seq")
        .values_list("seq", "prev_hash", "hash", *SEAL_COLUMNS)
    )
    for seq, prev_hash, head, pk, occurred_at, *rest in rows.iterator(chunk_size=FETCH):
        call_id = rest[-2]
        yield (
            seq,
            prev_hash,
            head,
            pk,
            instant(occurred_at),
            *rest[:-2],
            str(call_id) if call_id else None,
            rest[-1],
        )


def sealed_rows(*, upto_seq: int | None = None) -> Iterator[tuple[Any, ...]]:
    """(seq, prev_hash, hash, id, occurred_at, action, outcome, actor_type, actor_id,
    actor_label, agent_name, tool_name, session_id, call_id, data text) in seq order, the
    instant and the call id as text; with ``upto_seq``, only the links up to it."""
    if connection.vendor == "postgresql":
        return _rows_postgresql(upto_seq)
    return _rows_portable(upto_seq)


# An event waiting this long to be sealed means the sealer is stalled or not running (it
# runs every two seconds): the events after it are not protected by the chain meanwhile.
SEALER_STALLED_SECONDS = 600


def _sealer_stalled() -> list[str]:
    """A warning when the oldest event not yet sealed has waited too long (the unsealed
    index serves it); none otherwise."""
    oldest = (
        AuditEvent.objects.filter(hash="", seq__isnull=True)
        .order_by("id")
        .values_list("occurred_at", flat=True)
        .first()
    )
    if oldest is None:
        return []
    waited = (timezone.now() - oldest).total_seconds()
    if waited < SEALER_STALLED_SECONDS:
        return []
    return [
        f"the oldest event not yet sealed has waited {int(waited // 60)} minutes: the sealer "
        "is stalled or not running, and the events after it are not in the chain"
    ]


# Events are sealed about in the order they happen: a transaction that records one commits
# seconds later at most. One sealed after events that happened this much later than it says
# it did was written into the table directly, back-dated (the app's database role may
# insert; no code of Countersign's writes a past occurred_at).
BACKDATED_SECONDS = 600


def _backdated(occurred: str, latest: str) -> bool:
    return (
        datetime.fromisoformat(latest) - datetime.fromisoformat(occurred)
    ).total_seconds() > BACKDATED_SECONDS


def _backdated_warning(found: list[tuple[int, int, str, str]]) -> list[str]:
    if not found:
        return []
    listed = "; ".join(
        f"seq {seq} (id {pk}) says {occurred}, sealed after an event of {latest}"
        for seq, pk, occurred, latest in found
    )
    return [
        f"events dated long before events sealed ahead of them, written into the trail "
        f"directly with a past date (the first {len(found)}): {listed}"
    ]


def _problems_outside_the_chain() -> tuple[int, list[str]]:
    unsealed = AuditEvent.objects.filter(hash="", seq__isnull=True).count()
    # A row with a hash but no place in the chain is never walked: only tampering makes one.
    hidden = AuditEvent.objects.filter(seq__isnull=True).exclude(hash="")
    hidden_ids = list(hidden.values_list("id", flat=True)[:5])
    return unsealed, (
        [f"events with a hash but no seq (ids {hidden_ids}): written around the sealer"]
        if hidden_ids
        else []
    )


# How often a walk reports its progress (``verify_chain(progress=...)``), in events.
PROGRESS_EVERY = 50_000


def verify_chain(
    *,
    anchor_path: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Verification:
    """Walk the whole sealed chain and report the first link that does not hold.

    The sealer keeps sealing and anchoring while the walk runs. So the walk looks at the
    anchor file as it is first, then at the chain's head, and checks exactly those: every
    anchor it reads was written after its ``seq`` was sealed, hence before the head was
    read, so an anchor beyond that head means events were cut, never that the sealer moved
    on. Events sealed after that moment are left to the next walk.
    """
    path = anchor_path or settings.AUDIT_ANCHOR_PATH
    anchored = anchor.anchored_bytes(path)
    head_seq = chain_head()[0]
    unsealed, hidden = _problems_outside_the_chain()
    stalled = _sealer_stalled() if unsealed else []
    anchors = anchor.iter_anchors(path, upto=anchored)
    expected, prev_hash, checked, anchors_checked = 1, GENESIS_HASH, 0, 0
    # The latest occurred_at walked so far: the instants are UTC ISO text of one width per
    # precision, which compare as the times they name.
    latest = ""
    previous_id: int | None = None  # the id of the event at seq expected - 1
    backdated: list[tuple[int, int, str, str]] = []
    last_good: anchor.Anchor | None = None
    # Whether the file holds no anchor at all. Not "none matched": a walk that broke before
    # its first anchor, or a chain cut short of it, had one, and may name it in its reason.
    unanchored = False
    string, sha256 = canonical_string, hashlib.sha256

    def result(ok: bool, **extra: Any) -> Verification:
        warnings = [*hidden, *stalled, *_backdated_warning(backdated)]
        if unanchored and checked:
            warnings.append(
                f"no anchor in {path}: a rewrite of the whole chain could not be detected"
            )
        return Verification(
            ok=ok and not hidden,
            checked=checked,
            head_seq=expected - 1,
            head_hash=prev_hash,
            unsealed=unsealed,
            anchors_checked=anchors_checked,
            last_anchor={"seq": last_good.seq, "hash": last_good.hash, "at": last_good.at}
            if last_good
            else None,
            warnings=warnings,
            reason=extra.pop("reason", "" if not hidden else hidden[0]),
            **extra,
        )

    if progress is not None:
        progress(0, head_seq)
    try:
        pending = next(anchors, None)
        unanchored = pending is None
        for row in sealed_rows(upto_seq=head_seq):
            seq, stored_prev, stored_hash, pk = row[0], row[1], row[2], row[3]
            if seq != expected:
                what = "removed" if seq > expected else "duplicated or reordered"
                return result(
                    False,
                    broken_seq=expected,
                    broken_id=pk,
                    reason=f"expected seq {expected}, found seq {seq}: events {what}",
                )
            if stored_prev != prev_hash:
                # The seqs run on unbroken, so the link between the two was cut: seq - 1 was
                # altered and its hash computed again (it matches its own content), or this
                # event's prev_hash was changed, or events were removed and renumbered. The
                # event before is named too: it is the altered one in the first case.
                before = (
                    f"seq {seq - 1} (event id {previous_id}) was altered and its hash "
                    "recomputed, or "
                    if previous_id is not None
                    else ""
                )
                return result(
                    False,
                    broken_seq=seq,
                    broken_id=pk,
                    reason=(
                        "prev_hash is not the previous event's hash: "
                        f"{before}events removed or reordered"
                    ),
                )
            text = "".join(
                (
                    '{"action":',
                    string(row[5]),
                    ',"actor_id":',
                    string(row[8]),
                    ',"actor_label":',
                    string(row[9]),
                    ',"actor_type":',
                    string(row[7]),
                    ',"agent_name":',
                    string(row[10]),
                    ',"call_id":',
                    string(row[13]) if row[13] else "null",
                    ',"data":',
                    row[14],
                    ',"id":',
                    str(pk),
                    ',"occurred_at":',
                    string(row[4]),
                    ',"outcome":',
                    string(row[6]),
                    ',"seq":',
                    str(seq),
                    ',"session_id":',
                    string(row[12]),
                    ',"tool_name":',
                    string(row[11]),
                    "}",
                )
            )  # fmt: skip  (canonical.link_text, inlined: this loop runs a million times)
            digest = sha256((prev_hash + text).encode())
            if digest.hexdigest() != stored_hash:
                return result(
                    False,
                    broken_seq=seq,
                    broken_id=pk,
                    reason="hash does not match the event's content: the event was altered",
                )
            if pending is not None and pending.seq == seq:
                if pending.hash != stored_hash:
                    since = f"after seq {last_good.seq}" if last_good else "from the start"
                    return result(
                        False,
                        broken_seq=seq,
                        broken_id=pk,
                        reason=(
                            f"the anchor written at {pending.at} (line {pending.line}) records a "
                            f"different hash for seq {seq}: the chain was rewritten {since}, at or "
                            f"before seq {seq}"
                        ),
                    )
                anchors_checked += 1
                last_good = pending
                pending = next(anchors, None)
            occurred = row[4]
            if occurred >= latest:
                latest = occurred
            elif len(backdated) < 5 and _backdated(occurred, latest):
                backdated.append((seq, pk, occurred, latest))
            prev_hash, checked, expected = stored_hash, checked + 1, expected + 1
            previous_id = pk
            if progress is not None and checked % PROGRESS_EVERY == 0:
                progress(checked, head_seq)
        if pending is not None:
            return result(
                False,
                broken_seq=expected,
                reason=(
                    f"the anchor written at {pending.at} records seq {pending.seq}, but the "
                    f"chain ends at seq {expected - 1}: events removed from its end"
                ),
            )
    except anchor.AnchorFileDamaged as exc:
        return result(False, broken_seq=None, reason=f"the anchor file {path} is damaged: {exc}")
    except (DatabaseError, psycopg.Error) as exc:
        # Not a verdict on the chain: the walk did not get to its end.
        return result(
            False,
            interrupted=True,
            reason=(
                f"the walk was interrupted after seq {expected - 1} of {head_seq} "
                f"({type(exc).__name__}: {str(exc).strip()[:200]}); the events after it are "
                "not verified: run it again"
            ),
        )
    if expected - 1 != head_seq:
        # The head was read before the walk: fewer links than that is events gone.
        return result(
            False,
            broken_seq=expected,
            reason=(
                f"the chain's head was seq {head_seq} when the walk began, but it ends at seq "
                f"{expected - 1}: events removed from its end"
            ),
        )
    return result(True)


def verify_chain_or_unreadable(
    *, progress: Callable[[int, int], None] | None = None
) -> Verification:
    """``verify_chain()`` for the workers, whose outcome is recorded: an anchor file they
    cannot read (a directory, its permissions) gives no verdict, as ``verify_audit`` says,
    instead of an exception that records nothing and leaves a requested run "walking"."""
    try:
        return verify_chain(progress=progress)
    except OSError as problem:
        head_seq, head_hash = chain_head()
        return Verification(
            ok=False,
            checked=0,
            head_seq=head_seq,
            head_hash=head_hash,
            interrupted=True,
            reason=f"cannot read the anchor file {problem.filename}: {problem.strerror}",
        )


def record_verification(result: Verification, *, actor: Any = None) -> Verification:
    """Write the outcome of a walk into the trail itself: the auditor's status panel reads it.
    ``actor`` is the auditor who asked for the walk (None: the schedule or a command)."""
    record(
        action="audit.chain_verified",
        actor=actor,
        outcome="ok" if result.ok else "incomplete" if result.interrupted else "broken",
        data={
            "checked": result.checked,
            "head_seq": result.head_seq,
            "head_hash": result.head_hash,
            "unsealed": result.unsealed,
            "anchors_checked": result.anchors_checked,
            "last_anchor": result.last_anchor,
            "broken_seq": result.broken_seq,
            "broken_id": result.broken_id,
            "reason": result.reason,
            "warnings": result.warnings,
        },
    )
    return result
