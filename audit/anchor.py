"""The external anchor: the chain head, written periodically to an append-only file.

A hash chain alone cannot tell an honest chain from one rewritten end to end (alter one
event, recompute every later hash). The anchor can: each line records a ``(seq, hash)``
that the chain had at some moment, outside the database, so a rewrite shows up as a
mismatch at the first anchored ``seq`` at or after the altered event, and a removed tail
shows up as an anchored ``seq`` the chain no longer reaches. Keep the file where the
database's administrators cannot rewrite it (another host, WORM storage, a log shipper);
every anchor is also logged, so log retention is a second copy.

Format: JSON Lines, ``{"seq": 1234, "hash": "<64 hex>", "at": "<ISO 8601>"}``, ``seq``
strictly increasing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.utils import timezone

logger = logging.getLogger(__name__)

# The last line is a few hundred bytes at most; read the tail in blocks of this size.
TAIL_BLOCK = 4096


class AnchorFileDamaged(ValueError):
    """A line of the anchor file is not an anchor, or seqs do not increase."""


class AnchorNotHeld(Exception):
    """The chain no longer has, at the last anchor's seq, the hash that anchor recorded."""

    def __init__(self, last: Anchor) -> None:
        super().__init__(f"the chain no longer holds the hash anchored for seq {last.seq}")
        self.last = last


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    at: str
    line: int = 0  # 1-based line number in the file, 0 when unknown (tail reads)


def _parse(raw: bytes, line: int) -> Anchor:
    try:
        entry = json.loads(raw)
        anchor = Anchor(seq=int(entry["seq"]), hash=str(entry["hash"]), at=str(entry["at"]))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # 1e400: int(inf)
        raise AnchorFileDamaged(f"line {line} is not an anchor: {exc}") from None
    if anchor.seq < 1 or len(anchor.hash) != 64:
        raise AnchorFileDamaged(f"line {line} is not an anchor: bad seq or hash")
    return Anchor(seq=anchor.seq, hash=anchor.hash, at=anchor.at, line=line)


def anchored_bytes(path: Path) -> int:
    """How much of the anchor file exists now (0 for a missing file)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def iter_anchors(path: Path, *, upto: int | None = None) -> Iterator[Anchor]:
    """Every anchor in file order, streamed (constant memory). A missing file has none.
    With ``upto``, only the anchors within the file's first ``upto`` bytes.

    Raises ``AnchorFileDamaged`` at the first malformed line or non-increasing ``seq``.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        previous = 0
        read = 0
        for number, raw in enumerate(handle, start=1):
            read += len(raw)
            if upto is not None and read > upto:
                return  # written after the caller looked: not part of what it checks
            if not raw.strip():
                continue
            anchor = _parse(raw, number)
            if anchor.seq <= previous:
                raise AnchorFileDamaged(
                    f"line {number}: seq {anchor.seq} does not follow seq {previous}"
                )
            previous = anchor.seq
            yield anchor


def _last_line(fd: int) -> bytes:
    """The last non-empty line of an open file, read backwards from its end in blocks."""
    end = os.lseek(fd, 0, os.SEEK_END)
    buffer = b""
    position = end
    while position > 0:
        step = min(TAIL_BLOCK, position)
        position -= step
        buffer = os.pread(fd, step, position) + buffer
        stripped = buffer.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    return buffer.strip()


def last_anchor(path: Path) -> Anchor | None:
    """The newest anchor, reading only the end of the file (the file grows forever)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        raw = _last_line(fd)
    finally:
        os.close(fd)
    return _parse(raw, 0) if raw else None


def append_anchor(
    *, path: Path, seq: int, head_hash: str, holds: Callable[[Anchor], bool]
) -> Anchor | None:
    """Append ``(seq, head_hash)`` unless the file already holds that seq or a later one, and
    only onto the chain the last line anchored: ``holds(last)`` says whether the chain still
    has the last line's hash at its seq. Raises ``AnchorNotHeld`` when it does not.

    ``holds`` is asked only when a line is about to be written, or when the file is ahead
    of ``seq`` (a head read before another sealer anchored a later one is no removal): the
    sealer calls this every few seconds, and a head that did not move needs no query. An exclusive ``flock`` makes
    read-the-tail-then-append atomic between processes, so two beat processes (a
    misconfiguration) still keep ``seq`` increasing. ``O_APPEND`` never overwrites;
    ``fsync`` keeps the line across a crash.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = _last_line(fd)
        last = _parse(raw, 0) if raw else None
        if last is not None and last.seq > seq:
            if holds(last):
                # The head was read before another sealer (two seal tasks at once, a second
                # beat) sealed on and anchored past it: the chain reaches the anchor, so
                # nothing was removed, and there is nothing to add.
                return None
            logger.warning(
                "audit chain head seq %s is behind the anchor's seq %s: events were removed "
                "or the database was restored; run manage.py verify_audit",
                seq,
                last.seq,
            )
            return None
        if last is not None and last.seq == seq:
            if last.hash != head_hash:  # rewritten at the anchored seq itself
                raise AnchorNotHeld(last)
            return None
        if last is not None and not holds(last):
            # Cut below the anchor and grown past it again, or rewritten: anchoring the new
            # head would vouch for that chain.
            raise AnchorNotHeld(last)
        anchor = Anchor(seq=seq, hash=head_hash, at=timezone.now().isoformat())
        line = json.dumps({"seq": anchor.seq, "hash": anchor.hash, "at": anchor.at})
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the flock
    logger.info("audit chain anchored: seq=%s hash=%s", anchor.seq, anchor.hash)
    return anchor
