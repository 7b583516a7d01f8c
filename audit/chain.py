"""The hash chain over the audit trail: the sealer, and anchoring the head outside.

Writers only insert (``audit.log.record``); they never read or lock a chain head. A single
sealer links what they inserted: it takes every unsealed row visible to it, in id order,
and gives each the next ``seq``, the previous link's hash as ``prev_hash``, and
``hash = sha256(prev_hash || canonical JSON of the row and its seq)``.

Why this never forks, and loses nothing:

* One sealer at a time. Each sealing transaction first takes a PostgreSQL transaction-level
  advisory lock (``pg_try_advisory_xact_lock``); a second sealer gives up at once. The lock
  is released only after the holder's commit is visible, and the next holder reads the head
  with a new statement (READ COMMITTED: a fresh snapshot per statement), so it always
  extends the head the previous holder committed. The unique index on ``seq`` and the
  ``hash = ''`` guard on the UPDATE are a second line: a fork would fail, not commit.
* ``seq`` is given at seal time, not at insert time. A row whose transaction is still in
  flight is invisible to the sealer and simply sealed on a later pass with a later ``seq``,
  even if its id is lower than rows already sealed. So there is no "oldest in-flight
  transaction" horizon to compute and no gap to wait for; the chain order (``seq``) is the
  order in which events became visible, and it is the only order the verifier trusts.
* It keeps causality: if event A committed before event B was inserted (one writer's
  consecutive events, or a decision after its submission), A is sealed before B. Any
  snapshot that sees B also sees A, and A's id is lower (ids come from a sequence, and A's
  was drawn first), so within one pass A comes first, or A was sealed on an earlier pass.
* So ``seq`` is also the order to follow the trail in: once a reader sees seq N, it sees
  every seq below N, and every event sealed afterwards gets a seq above N. An id gives no
  such promise (a late commit leaves a lower id behind one already read): a reader that
  pages through what is new asks for ``seq > N`` (``audit.filters``' ``after_seq``).
* A row is sealed exactly once: the UPDATE trigger (``models.NotASeal``) refuses any other
  change to a sealed row and any change to a row's content.

On SQLite (the embedded mode) writers are serialised by the database, so ``record()``
seals inline within the writer's transaction; the same code runs, the lock is implicit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from audit import anchor, rollups
from audit.canonical import GENESIS_HASH, instant, link_hash, link_text
from audit.models import AuditEvent

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process.
SEALER_LOCK_KEY = 0x436F756E7465  # "Counte"
SEAL_BATCH = 2000


# An event's own columns, in the order the chain hashes them (then its data).
EVENT_COLUMNS = (
    "id",
    "occurred_at",
    "action",
    "outcome",
    "actor_type",
    "actor_id",
    "actor_label",
    "agent_name",
    "tool_name",
    "session_id",
    "call_id",
)
# What the sealer reads of each unsealed event; ``data_text`` is the database's own text
# of the data (see audit.canonical), not a re-serialisation of it.
SEAL_COLUMNS = (*EVENT_COLUMNS, "data_text")


def row_text(seq: int, row: tuple[Any, ...] | list[Any]) -> str:
    """The link text of one row read as ``SEAL_COLUMNS``."""
    (
        pk,
        occurred_at,
        action,
        outcome,
        actor_type,
        actor_id,
        actor_label,
        agent_name,
        tool_name,
        session_id,
        call_id,
        data_text,
    ) = row
    return link_text(
        seq=seq,
        id=pk,
        occurred_at=instant(occurred_at) if isinstance(occurred_at, datetime) else occurred_at,
        action=action,
        outcome=outcome,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label,
        agent_name=agent_name,
        tool_name=tool_name,
        session_id=session_id,
        call_id=str(call_id) if call_id else None,
        data_text=data_text,
    )


def with_data_text(events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
    return events.annotate(data_text=Cast("data", TextField()))


def event_hash(prev_hash: str, event: AuditEvent) -> str:
    """The hash ``event`` must carry at its ``seq``, given the previous link's hash."""
    assert event.seq is not None, "only a sealed event has a place in the chain"
    row = with_data_text(AuditEvent.objects.filter(pk=event.pk)).values_list(*SEAL_COLUMNS).get()
    return link_hash(prev_hash, row_text(event.seq, row))


def chain_head() -> tuple[int, str]:
    """(seq, hash) of the last sealed event, or (0, genesis) for an empty chain."""
    last = (
        AuditEvent.objects.filter(seq__isnull=False).order_by("-seq").values_list("seq", "hash")[:1]
    )
    for seq, head in last:
        if seq is not None:  # always so: the filter excludes unsealed rows
            return seq, head
    return 0, GENESIS_HASH


def _take_sealer_lock() -> bool:
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEALER_LOCK_KEY])
        return bool(cursor.fetchone()[0])


def _unsealed(limit: int) -> list[tuple[Any, ...]]:
    # The partial index audit_unsealed_idx holds exactly these rows, in id order.
    unsealed = with_data_text(AuditEvent.objects.filter(hash="")).order_by("id")
    return list(unsealed.values_list(*SEAL_COLUMNS)[:limit])


def _store_seals(seals: list[tuple[int, int, str, str]], sealed_at: datetime) -> None:
    """Write (id, seq, prev_hash, hash) for a batch, refusing to touch an already sealed row."""
    if connection.vendor == "postgresql":
        # One statement for the whole batch; bulk_update's CASE per row is ~15x slower.
        ids, seqs, prevs, hashes = (list(column) for column in zip(*seals, strict=True))
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE audit_auditevent AS e"
                " SET seq = v.seq, prev_hash = v.prev_hash, hash = v.hash, sealed_at = %s"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[])"
                "   AS v(id, seq, prev_hash, hash)"
                " WHERE e.id = v.id AND e.hash = ''",
                [sealed_at, ids, seqs, prevs, hashes],
            )
            updated = cursor.rowcount
    else:
        updated = 0
        for pk, seq, prev_hash, head in seals:
            updated += AuditEvent.objects.filter(pk=pk, hash="").update(
                seq=seq, prev_hash=prev_hash, hash=head, sealed_at=sealed_at
            )
    if updated != len(seals):
        raise RuntimeError(f"sealed {updated} of {len(seals)} events: another sealer ran")


def seal_pending(*, batch_size: int = SEAL_BATCH) -> int:
    """Seal every unsealed event visible now; returns how many were sealed.

    Returns 0 at once when another sealer holds the lock: it will seal these rows.
    """
    sealed = 0
    while True:
        with transaction.atomic():
            if not _take_sealer_lock():
                return sealed
            seq, prev_hash = chain_head()
            rows = _unsealed(batch_size)
            if not rows:
                return sealed
            seals = []
            for row in rows:
                seq += 1
                head = link_hash(prev_hash, row_text(seq, row))
                seals.append((row[0], seq, prev_hash, head))
                prev_hash = head
            _store_seals(seals, timezone.now())
            # The analytics summary counts exactly the events sealed, in the same transaction.
            rollups.fold(rows)
            sealed += len(rows)
        if len(rows) < batch_size:
            return sealed


@transaction.atomic
def rebuild_rollups() -> None:
    """Make the analytics summary again from the sealed events, holding the sealer's lock
    (waiting for a running pass) so that no batch is folded twice or missed meanwhile."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEALER_LOCK_KEY])
    rollups.rebuild()


def holds_anchor(last: anchor.Anchor) -> bool:
    """Whether the chain still has, at the anchor's seq, the hash the anchor recorded."""
    stored = AuditEvent.objects.filter(seq=last.seq).values_list("hash", flat=True).first()
    return stored == last.hash


def write_anchor(*, path: Path | None = None) -> anchor.Anchor | None:
    """Append the current chain head to the anchor file if it moved since the last line,
    and only onto the chain the last line anchored."""
    path = path or settings.AUDIT_ANCHOR_PATH
    seq, head = chain_head()
    if seq == 0:
        return None
    try:
        return anchor.append_anchor(path=path, seq=seq, head_hash=head, holds=holds_anchor)
    except anchor.AnchorNotHeld as moved:
        # Cut below the anchor and grown past it again, or rewritten: anchoring the new head
        # would vouch for that chain, and the status panel, which compares the last anchor
        # only, would read "matches". The walk names where it broke.
        logger.error(
            "the audit chain no longer holds the hash anchored for seq %s (events removed or "
            "rewritten, or the database restored): no anchor written; run manage.py "
            "verify_audit",
            moved.last.seq,
        )
        return None


def seal_and_anchor() -> int:
    """What beat runs every few seconds: seal what writers appended, then anchor the head.

    Anchoring runs even when this pass sealed nothing: on SQLite ``record()`` seals inline,
    and another sealer may have done the work.
    """
    sealed = seal_pending()
    try:
        write_anchor()
    except OSError:
        # The chain is intact in the database; a missing anchor only weakens the proof
        # until the next pass, so say it loudly and keep sealing.
        logger.exception("could not write the audit anchor to %s", settings.AUDIT_ANCHOR_PATH)
    except anchor.AnchorFileDamaged as damage:
        # The file's last line is not an anchor (a write cut short by a full disk, an edit):
        # nothing is appended after it, and the walk reports the file damaged until someone
        # repairs it. Raising here would stop the sweeps' loop and fail every sealing task.
        logger.error(
            "the audit anchor file %s is damaged, no anchor written: %s",
            settings.AUDIT_ANCHOR_PATH,
            damage,
        )
    return sealed


@dataclass(frozen=True)
class SealBacklog:
    unsealed: int
    oldest: datetime | None

    @property
    def oldest_age_seconds(self) -> float:
        return (timezone.now() - self.oldest).total_seconds() if self.oldest else 0.0


def seal_backlog() -> SealBacklog:
    """How many events wait for the sealer, and since when (the partial index answers)."""
    unsealed = AuditEvent.objects.filter(hash="")
    oldest = unsealed.order_by("id").values_list("occurred_at", flat=True).first()
    return SealBacklog(unsealed=unsealed.count(), oldest=oldest)
