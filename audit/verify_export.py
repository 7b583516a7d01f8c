#!/usr/bin/env python3
"""Verify a Countersign audit export (CSV or JSON Lines) with nothing but Python 3.11+.

    python3 verify_export.py export.jsonl [--anchor audit-anchor.jsonl]

For every sealed row it recomputes

    hash = sha256(prev_hash || link text), UTF-8, lowercase hex

where the link text is this JSON object, keys in this (sorted) order, no white space,
strings escaped as json.dumps(s, ensure_ascii=False) escapes them:

    {"action":..,"actor_id":..,"actor_label":..,"actor_type":..,"agent_name":..,
     "call_id":".."|null,"data":DATA,"id":N,"occurred_at":"..","outcome":..,"seq":N,
     "session_id":..,"tool_name":..}

and DATA is the event's data exactly as the export wrote it: the CSV cell, or in JSON Lines
the text after the line's first ', "data" : ' up to its final '}'. (That is PostgreSQL's
canonical text of the value; the chain binds its bytes, not a re-serialisation.)

and checks that each row's ``prev_hash`` is the previous row's ``hash`` wherever the two
rows are consecutive in ``seq``. An export of the whole trail is one run from seq 1, whose
first ``prev_hash`` is 64 zeros; a filtered export has gaps, and each run is checked on its
own. With ``--whole`` the export must be the whole trail (made without a filter): it must
start at seq 1 and have no gap, so a row deleted from it is found (a filtered export cannot
tell a row left out by its filter from one deleted). With ``--anchor`` the anchored hashes
inside the export are compared too. An anchor past the export's last seq means rows cut
from its end, or sealed after the export was made; in a whole export it fails when the
export holds a row recorded (``occurred_at``) more than a second (hosts' clocks differ)
after that anchor was written (``at``): the export was made after that seq was sealed.
Otherwise it is reported with the anchor's time: if the export was made later, its end
was cut. Rows not yet sealed (no seq) are counted, not checked (the chain vouches for none
of them); one that has a hash, a prev_hash or a sealed_at all the same had its seal taken
away, and fails, and so does one before a sealed row (the export writes them last). A line
that is not a row of an export (an edit that broke its JSON or its cells, a file cut
mid-row, a column or key the export never writes, or one written twice) fails, named by
its line number after the rows checked before it; nothing after it is read. Exit status 0
when everything holds, 1 otherwise.

In CSV, a free-text cell that a spreadsheet could take for a formula was written with one
leading apostrophe; it is removed before hashing. A cell of those columns that starts a
formula without it (or with "'" before anything else) was not written by the export, and
fails.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

GENESIS = "0" * 64
FORMULA_GUARDED = ("outcome", "actor_label", "agent_name", "tool_name", "session_id")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
DATA_KEY = ', "data" : '
# How far apart the clocks of the hosts that record events and write the anchor may be.
CLOCK_ALLOWANCE = timedelta(seconds=1)


class DamagedExport(ValueError):
    """A line of the export is not a row of one: the file was altered or cut short."""


TEXT_COLUMNS = (
    "prev_hash", "hash", "occurred_at", "action", "outcome", "actor_type", "actor_id",
    "actor_label", "agent_name", "tool_name", "session_id",
)  # fmt: skip
# Every column an export writes. A row with another, or with one twice, is refused: the
# chain vouches only for these, and of two cells or keys of one name a spreadsheet, pandas
# or a JSON reader may show the one the hash was not computed over.
COLUMNS = (
    "seq", "prev_hash", "hash", "id", "occurred_at", "action", "outcome", "actor_type",
    "actor_id", "actor_label", "agent_name", "tool_name", "session_id", "call_id", "data",
    "sealed_at",
)  # fmt: skip


def _checked(row: Any) -> dict[str, Any]:
    """``row`` with every column a link needs, of the type the export writes, or
    DamagedExport: a traceback (a KeyError, int() of a word) named no row, and said nothing
    of the rows checked before it."""
    if not isinstance(row, dict):
        raise DamagedExport("not an object")
    for column in TEXT_COLUMNS:
        if not isinstance(row.get(column), str):
            raise DamagedExport(f"{column} is missing or not text")
    if row.get("call_id") is not None and not isinstance(row["call_id"], str):
        raise DamagedExport("call_id is not text")
    for column in ("seq", "id"):
        value = row.get(column)
        if (column == "id" or value is not None) and (
            not isinstance(value, int) or isinstance(value, bool)
        ):
            raise DamagedExport(f"{column} is missing or not a whole number")
    return row


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each written once (``json`` keeps the last silently)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise DamagedExport("a key is written twice")
    return result


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:  # noqa: PTH123 - stdlib only
        try:
            first = handle.readline()
        except UnicodeDecodeError as exc:
            raise DamagedExport(f"line 1: not UTF-8 text ({exc})") from None
        handle.seek(0)
        if first.lstrip().startswith("{"):
            yield from _read_json_lines(handle)
        else:
            yield from _read_csv(handle)


def _read_json_lines(handle: Any) -> Iterator[dict[str, Any]]:
    number = 0
    while True:
        number += 1
        try:
            line = handle.readline()
            if not line:
                return
            if not line.strip():
                continue
            row = _checked(json.loads(line, object_pairs_hook=_object))
            if unknown := sorted(set(row) - set(COLUMNS)):
                raise DamagedExport(f"not a column of an export: {', '.join(unknown)}")
            line = line.rstrip("\r\n")
            if DATA_KEY not in line:
                raise DamagedExport("no data")
            row["data_text"] = line[line.index(DATA_KEY) + len(DATA_KEY) : -1]
            if json.loads(row["data_text"], object_pairs_hook=_object) != row.get("data"):
                raise DamagedExport("cannot find the data's text")
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8, and the checks above
            raise DamagedExport(f"line {number}: {exc}") from None
        yield row


def _read_csv(handle: Any) -> Iterator[dict[str, Any]]:
    # The largest limit every platform takes: the csv module holds it in a C long, 32
    # bits on Windows, where sys.maxsize raised OverflowError before a row was read.
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(handle)
    try:
        header = reader.fieldnames  # None: an empty file, the JSON Lines export of no row
        if header is not None and not {"seq", "id", "data", *TEXT_COLUMNS} <= set(header):
            raise DamagedExport("not the header of an export's CSV")
        if header is not None and len(set(header)) != len(header):
            raise DamagedExport("a column is written twice")
        if header is not None and (unknown := sorted(set(header) - set(COLUMNS))):
            raise DamagedExport(f"not a column of an export: {', '.join(unknown)}")
        for row in reader:
            if any(value is None for value in row.values()) or None in row:
                raise DamagedExport("not as many cells as the header has columns")
            if "data" not in row or "call_id" not in row or "seq" not in row:
                raise DamagedExport("seq, call_id or data is missing")
            for column in FORMULA_GUARDED:
                # Only the "'" the export put before a formula's first character. Any other
                # cell starting so was never written by the export: a "'" put before
                # something else, or one taken off, which a spreadsheet then runs while the
                # cell hashes as the defused one did.
                value = row.get(column) or ""
                if value[:1] == "'" and value[1:2] in FORMULA_STARTS:
                    row[column] = value[1:]
                elif value[:1] in FORMULA_STARTS:
                    raise DamagedExport(f"{column} starts a formula the export defuses")
            yield _checked(
                {
                    **row,
                    "data_text": row["data"],
                    "seq": _whole("seq", row["seq"]) if row.get("seq") else None,
                    "id": _whole("id", row.get("id")),
                    "call_id": row["call_id"] or None,
                }
            )
    except (ValueError, csv.Error) as exc:
        raise DamagedExport(f"line {reader.line_num}: {exc}") from None


def _whole(column: str, text: str | None) -> int:
    """A cell's whole number, ASCII digits only: int() alone takes " 7", "+7" and "7_0"."""
    if text is None or not (text.isascii() and text.isdigit()):
        raise DamagedExport(f"{column} is missing or not a whole number")
    return int(text)


def _s(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def link_hash(prev_hash: str, row: dict[str, Any]) -> str:
    text = (
        f'{{"action":{_s(row["action"])},"actor_id":{_s(row["actor_id"])}'
        f',"actor_label":{_s(row["actor_label"])},"actor_type":{_s(row["actor_type"])}'
        f',"agent_name":{_s(row["agent_name"])}'
        f',"call_id":{_s(row["call_id"]) if row["call_id"] else "null"}'
        f',"data":{row["data_text"]},"id":{int(row["id"])}'
        f',"occurred_at":{_s(row["occurred_at"])},"outcome":{_s(row["outcome"])}'
        f',"seq":{int(row["seq"])},"session_id":{_s(row["session_id"])}'
        f',"tool_name":{_s(row["tool_name"])}}}'
    )
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


class DamagedAnchor(Exception):
    """The anchor file cannot be read as anchors: no verdict can rest on it."""


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def read_anchors(path: str | None) -> dict[int, tuple[str, str | None]]:
    """{seq: (hash, at)}: ``at`` is when the anchor was written (None if not given).

    Each line's seq must follow the one before, as the sealer writes them (and as
    ``manage.py verify_audit`` requires): a second line for a seq, appended with a rewritten
    chain's hash, would otherwise replace the true one."""
    if not path:
        return {}
    anchors: dict[int, tuple[str, str | None]] = {}
    previous = 0
    try:
        with open(path, encoding="utf-8") as handle:  # noqa: PTH123 - stdlib only
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    seq, head = int(entry["seq"]), str(entry["hash"])
                    at = entry.get("at")
                    if at is not None and _instant(at) is None:
                        raise ValueError(f"at {at!r} is not an ISO 8601 time")
                    if seq <= previous:
                        raise DamagedAnchor(
                            f"line {number}: seq {seq} does not follow seq {previous}"
                        )
                    anchors[seq], previous = (head, at), seq
                except (ValueError, KeyError, TypeError, OverflowError) as exc:  # 1e400
                    raise DamagedAnchor(f"line {number} is not an anchor ({exc})") from None
    except OSError as exc:
        raise DamagedAnchor(exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:  # raised by the reading, before any line is parsed
        raise DamagedAnchor(f"not UTF-8 text ({exc})") from None
    return anchors


def verify(
    path: str, anchor_path: str | None = None, *, whole: bool = False
) -> tuple[bool, list[str]]:
    anchors = read_anchors(anchor_path)
    report: list[str] = []
    ok, checked, unsealed, runs, anchored = True, 0, 0, 0, 0
    previous: dict[str, Any] | None = None
    latest: tuple[datetime, Any] | None = None  # the last recorded row: (occurred_at, id)
    unsealed_before: Any = None  # the id of a row not yet sealed that no sealed row followed
    rows = read_rows(path)
    while True:
        try:
            row = next(rows, None)
        except DamagedExport as exc:
            # Named, with what was checked before it; nothing after it is.
            report.append(f"{exc}: not a row of an export (altered or cut); not read past it")
            ok = False
            break
        if row is None:
            break
        occurred = _instant(row["occurred_at"])
        if occurred is not None and occurred.tzinfo and (latest is None or occurred > latest[0]):
            latest = (occurred, row["id"])
        if row["seq"] is None:
            if row.get("hash") or row.get("prev_hash"):
                report.append(f"id {row['id']}: has a hash but no seq: its seq was removed")
                ok = False
            elif row.get("sealed_at"):
                report.append(
                    f"id {row['id']}: was sealed (sealed_at) but has no seq: its seal was removed"
                )
                ok = False
            unsealed += 1
            unsealed_before = unsealed_before or row["id"]
            continue
        if unsealed_before is not None:
            # The export writes them last: one among the chain's rows was put there.
            report.append(
                f"seq {row['seq']}: follows id {unsealed_before}, a row not yet sealed, "
                "which an export writes after every sealed row"
            )
            ok, unsealed_before = False, None
        if whole and previous is None and row["seq"] != 1:
            report.append(f"seq {row['seq']}: a whole export starts at seq 1")
            ok = False
        if whole and previous is not None and row["seq"] > previous["seq"] + 1:
            missing = f"{previous['seq'] + 1}" + (
                f" to {row['seq'] - 1}" if row["seq"] - 1 > previous["seq"] + 1 else ""
            )
            report.append(f"seq {missing}: missing from a whole export")
            ok = False
        if link_hash(row["prev_hash"], row) != row["hash"]:
            report.append(f"seq {row['seq']} (id {row['id']}): the row does not match its hash")
            ok = False
        if previous is not None and row["seq"] <= previous["seq"]:
            report.append(f"seq {row['seq']}: out of order after seq {previous['seq']}")
            ok = False
        consecutive = previous is not None and row["seq"] == previous["seq"] + 1
        if consecutive and row["prev_hash"] != previous["hash"]:  # type: ignore[index]
            report.append(f"seq {row['seq']}: prev_hash is not seq {row['seq'] - 1}'s hash")
            ok = False
        if row["seq"] == 1 and row["prev_hash"] != GENESIS:
            report.append("seq 1: does not start from the genesis hash")
            ok = False
        runs += 0 if consecutive else 1
        if row["seq"] in anchors:
            anchored += 1
            if anchors[row["seq"]][0] != row["hash"]:
                report.append(f"seq {row['seq']}: differs from the anchor")
                ok = False
        checked += 1
        previous = row
    last = previous["seq"] if previous is not None else 0
    if whole and previous is None:
        report.append("no sealed row: a whole export starts at seq 1")
        ok = False
    beyond = sorted(seq for seq in anchors if seq > last)
    # Anchors written before a row of the export was recorded: the export was made after
    # their seq was sealed, so a whole export must reach it.
    passed = [
        seq
        for seq in beyond
        if latest is not None
        and (written := _instant(anchors[seq][1])) is not None
        and written.tzinfo
        and written + CLOCK_ALLOWANCE < latest[0]
    ]
    if whole and passed and latest is not None:
        cut = (
            f"seq {last + 1} was"
            if passed[-1] == last + 1
            else f"seq {last + 1} to {passed[-1]} were"
        )
        report.append(
            f"the anchor records seq {passed[-1]} at {anchors[passed[-1]][1]}, past this "
            f"export's last seq {last}, yet the export holds id {latest[1]}, recorded at "
            f"{latest[0].isoformat()}, after it: {cut} cut from the export"
        )
        ok = False
    elif beyond:
        at = anchors[beyond[-1]][1]
        report.append(
            f"the anchor records seq {beyond[-1]}"
            + (f" at {at}" if at else "")
            + f", past this export's last seq {last}: rows sealed after the export was made, "
            + (f"or cut from its end if it was made after {at}" if at else "or cut from its end")
        )
    report.append(
        f"{checked} sealed rows checked in {runs} run(s) of consecutive seq, "
        f"{anchored} against the anchor, {unsealed} not yet sealed"
    )
    return ok, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("export", help="a .csv or .jsonl export of the Countersign audit trail")
    parser.add_argument("--anchor", help="the anchor file (JSON Lines of seq and hash)")
    parser.add_argument(
        "--whole",
        action="store_true",
        help="the export is the whole trail (no filter): no row may be missing",
    )
    options = parser.parse_args(argv)
    try:
        ok, report = verify(options.export, options.anchor, whole=options.whole)
    except DamagedAnchor as exc:
        # Neither OK nor BROKEN: the export was not checked against anything.
        print(f"cannot read the anchor file {options.anchor}: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    for line in report:
        print(line)  # noqa: T201 - a command-line tool
    print("OK" if ok else "BROKEN")  # noqa: T201
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
