"""Exports: the filtered view, streamed, with the hashes a third party verifies."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client

from audit import chain, exports
from audit.filters import EventFilter
from audit.log import record
from audit.models import AuditEvent
from tests.support import ROOT
from tests.support.operator import cancel_from_another_session, this_backend

pytestmark = pytest.mark.django_db
VERIFIER = ROOT / "audit" / "verify_export.py"


@pytest.fixture
def mixed_trail() -> None:
    for n in range(6):
        record(
            action="call.submitted" if n % 2 else "call.decision",
            outcome="pending" if n % 2 else "approve",
            session_id='=HYPERLINK("http://evil")' if n == 3 else f"s-{n % 3}",
            data={
                "n": n,
                "price": 12.5 + n,
                "note": "naïve “quotes” \\ and \n newline",
                "tiny": 1e-07,
            },
        )
    chain.seal_and_anchor()
    record(action="call.submitted", outcome="pending", data={"unsealed": True})


def download(client: Client, fmt: str, query: str = "") -> bytes:
    response = client.get(f"/audit/export.{fmt}?{query}")
    assert response.status_code == 200
    assert response.streaming
    return b"".join(response.streaming_content)


def exported_ids(body: bytes, fmt: str) -> list[int]:
    text = body.decode()
    if fmt == "jsonl":
        return [json.loads(line)["id"] for line in text.splitlines()]
    return [int(row["id"]) for row in csv.DictReader(io.StringIO(text))]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    "query", ["", "action=call.submitted", "outcome=approve&session=s-0", "tool=nothing"]
)
def test_an_export_holds_exactly_the_events_of_the_view(
    auditor_client: Client, mixed_trail, fmt: str, query: str
) -> None:
    from django.http import QueryDict

    view = EventFilter.from_query(QueryDict(query)).apply(AuditEvent.objects.all())
    assert sorted(exported_ids(download(auditor_client, fmt, query), fmt)) == sorted(
        view.values_list("id", flat=True)
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_whole_export_verifies_with_the_stand_alone_script(
    auditor_client: Client, mixed_trail, fmt: str, tmp_path: Path, anchor_path: Path
) -> None:
    path = tmp_path / f"trail.{fmt}"
    path.write_bytes(download(auditor_client, fmt))
    result = _verify(path, "--anchor", str(anchor_path))
    assert result.returncode == 0, result.stdout
    sealed = AuditEvent.objects.exclude(seq=None).count()
    assert f"{sealed} sealed rows checked in 1 run(s)" in result.stdout
    # The fixture's last event, and the export's own audit.exported.
    assert "1 against the anchor, 2 not yet sealed" in result.stdout


@pytest.mark.parametrize(
    "anchor_line", ['{"seq": 1e400, "hash": "x"}', "not json", '{"hash": "x"}', '["seq"]']
)
def test_a_damaged_anchor_file_gives_no_verdict_and_no_traceback(
    auditor_client: Client, mixed_trail, tmp_path: Path, anchor_line: str
) -> None:
    path = tmp_path / "trail.jsonl"
    path.write_bytes(download(auditor_client, "jsonl"))
    anchor = tmp_path / "anchor.jsonl"
    anchor.write_text(anchor_line + "\n")
    result = _verify(path, "--anchor", str(anchor))
    assert result.returncode == 2
    assert result.stderr.startswith(f"cannot read the anchor file {anchor}: line 1 is not an")
    assert "Traceback" not in result.stderr
    assert "OK" not in result.stdout and "BROKEN" not in result.stdout


def test_an_anchor_file_with_bytes_that_are_not_utf8_gives_no_verdict(
    auditor_client: Client, mixed_trail, tmp_path: Path
) -> None:
    """A damaged byte (a bit flipped on the disk, a copy through a tool that re-encodes) is
    a damaged anchor file too: exit code 2 and a message, not a traceback (exit 1)."""
    path = tmp_path / "trail.jsonl"
    path.write_bytes(download(auditor_client, "jsonl"))
    anchor = tmp_path / "anchor.jsonl"
    anchor.write_bytes(b'{"seq": 1, "hash": "\xff\xfe"}\n')
    result = _verify(path, "--anchor", str(anchor))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"cannot read the anchor file {anchor}: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_filtered_export_verifies_row_by_row(
    auditor_client: Client, mixed_trail, fmt: str, tmp_path: Path
) -> None:
    path = tmp_path / f"view.{fmt}"
    path.write_bytes(download(auditor_client, fmt, "action=call.submitted"))
    assert _verify(path).returncode == 0


@pytest.mark.django_db(transaction=True)
def test_a_reader_following_the_trail_by_seq_gets_an_event_committed_late(
    auditor_client: Client, tmp_path: Path
) -> None:
    """A reader that exports what is new, again and again, from the last seq it read
    (``after_seq``): an event inserted first (a lower id) in a transaction that commits only
    after the reader read a later event is in its next export, and nothing is read twice.
    Paging on "id > the last id read" would have skipped it for good."""
    inserted, release = threading.Event(), threading.Event()
    late_id: list[int] = []

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                late_id.append(record(action="test.late", data={}).pk)
                inserted.set()
                release.wait(30)
        finally:
            connection.close()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    try:
        assert inserted.wait(10)
        early = record(action="test.early", data={})
        chain.seal_pending()
        first = [
            json.loads(line)
            for line in download(auditor_client, "jsonl", "after_seq=0").decode().splitlines()
        ]
        read = {row["id"] for row in first}
        assert early.pk in read and late_id[0] not in read
        assert all(row["seq"] is not None for row in first), "only sealed events"
        assert late_id[0] < max(read), "an id cursor would be past it"
    finally:
        release.set()
        writer.join(10)
    chain.seal_pending()
    cursor = max(row["seq"] for row in first)
    body = download(auditor_client, "jsonl", f"after_seq={cursor}")
    second = [json.loads(line) for line in body.decode().splitlines()]
    assert late_id[0] in {row["id"] for row in second}
    assert not read & {row["id"] for row in second}, "nothing read twice"
    assert [row["seq"] for row in second] == list(range(cursor + 1, cursor + 1 + len(second)))
    path = tmp_path / "since.jsonl"
    path.write_bytes(body)
    assert _verify(path).returncode == 0


def test_an_edited_export_fails_verification(auditor_client: Client, mixed_trail, tmp_path) -> None:
    lines = download(auditor_client, "jsonl").decode().splitlines()
    index = next(i for i, line in enumerate(lines) if '"outcome" : "pending"' in line)
    lines[index] = lines[index].replace('"outcome" : "pending"', '"outcome" : "forged"')
    row = json.loads(lines[index])
    path = tmp_path / "edited.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = _verify(path)
    assert result.returncode == 1
    assert f"seq {row['seq']} (id {row['id']}): the row does not match its hash" in result.stdout


def test_a_row_deleted_from_a_whole_export_or_cut_from_its_end_is_found(
    auditor_client: Client, mixed_trail, tmp_path: Path, anchor_path: Path
) -> None:
    lines = download(auditor_client, "jsonl").decode().splitlines()
    whole = tmp_path / "whole.jsonl"
    whole.write_text("\n".join(lines) + "\n")
    assert _verify(whole, "--whole").returncode == 0

    middle = tmp_path / "deleted.jsonl"
    middle.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    assert _verify(middle).returncode == 0, "a filtered export has gaps: it cannot tell"
    result = _verify(middle, "--whole")
    assert result.returncode == 1 and "seq 3: missing from a whole export" in result.stdout

    sealed = [line for line in lines if json.loads(line)["seq"] is not None]
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(sealed[:-2]) + "\n")
    result = _verify(cut, "--whole", "--anchor", str(anchor_path))
    # Nothing left in the file was recorded after the anchor: it may be an older export.
    assert result.returncode == 0, result.stdout
    at = json.loads(anchor_path.read_text().splitlines()[-1])["at"]
    assert (
        f"the anchor records seq {len(sealed)} at {at}, past this export's last seq "
        f"{len(sealed) - 2}: rows sealed after the export was made, or cut from its end if "
        f"it was made after {at}"
    ) in result.stdout


def test_a_forged_row_passed_off_as_not_yet_sealed_fails(
    auditor_client: Client, mixed_trail, tmp_path: Path
) -> None:
    """A sealed row edited and its seq blanked, so that it would not be checked: a row not
    yet sealed has no hash, and this one has."""
    lines = download(auditor_client, "jsonl").decode().splitlines()
    index = next(i for i, line in enumerate(lines) if '"outcome" : "pending"' in line)
    row = json.loads(lines[index])
    lines[index] = (
        lines[index]
        .replace('"outcome" : "pending"', '"outcome" : "forged"')
        .replace(f'"seq" : {row["seq"]}', '"seq" : null')
    )
    path = tmp_path / "forged.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = _verify(path)
    assert result.returncode == 1
    assert f"id {row['id']}: has a hash but no seq" in result.stdout


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_secrets_as_agents_write_them_never_reach_an_export(
    auditor_client: Client, fmt: str, tmp_path: Path
) -> None:
    """A card beside its security code, a password in Markdown's backquotes, a Redis URL's
    password, a PGP private key: each reached the trail, and every export, in clear."""
    reasoning = (
        "Paying with 4111111111111111 123, then signing in with password: `hunter2 two`; "
        "the cache is redis://:s3cr3tpw@cache.internal:6379/0 and the key is\n"
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGR0abcdef\n"
        "-----END PGP PRIVATE KEY BLOCK-----"
    )
    record(action="call.submitted", outcome="pending", data={"reasoning": reasoning})
    chain.seal_and_anchor()
    body = download(auditor_client, fmt).decode()
    for secret in ("4111111111111111", "hunter2", "s3cr3tpw", "lQOYBGR0abcdef"):
        assert secret not in body, secret
    path = tmp_path / f"trail.{fmt}"
    path.write_text(body)
    assert _verify(path, "--whole").returncode == 0


def test_a_cell_a_spreadsheet_would_run_is_defused(auditor_client: Client, mixed_trail) -> None:
    rows = list(csv.DictReader(io.StringIO(download(auditor_client, "csv").decode())))
    assert '\'=HYPERLINK("http://evil")' in [r["session_id"] for r in rows]


@pytest.mark.parametrize("in_transaction", [True, False])
@pytest.mark.django_db(transaction=True)
def test_a_reader_that_stops_early_leaves_the_connection_usable(in_transaction: bool) -> None:
    AuditEvent.objects.bulk_create(
        AuditEvent(action="test.bulk", actor_type="system", data={"x": "y" * 100})
        for _ in range(2000)
    )

    def read_a_little() -> None:
        stream = exports.stream(AuditEvent.objects.all(), "jsonl")
        assert next(stream)
        stream.close()  # the client went away mid-download
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM audit_auditevent")
            assert cursor.fetchone()[0] == 2000

    if in_transaction:
        with transaction.atomic():
            read_a_little()
    else:
        read_a_little()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.django_db(transaction=True)
def test_an_export_the_database_cuts_short_fails_rather_than_look_whole(fmt: str) -> None:
    """An operator's cancel (or a statement timeout) mid-download: the stream ends in an
    error, so the file cannot pass for the whole trail."""
    AuditEvent.objects.bulk_create(
        AuditEvent(action="test.bulk", actor_type="system", data={"x": "y" * 16000})
        for _ in range(2500)
    )
    exporter = this_backend()
    stream = exports.stream(AuditEvent.objects.all(), fmt)
    assert next(stream)
    cancel_from_another_session(exporter)
    with pytest.raises((DatabaseError, psycopg.Error)):
        for _ in stream:
            pass


def test_the_workspace_serves_the_verifier(auditor_client: Client) -> None:
    response = auditor_client.get("/audit/verify_export.py")
    assert b"".join(response.streaming_content) == VERIFIER.read_bytes()


def _verify(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A plain interpreter in an empty directory: the script needs nothing from Countersign.
    return subprocess.run(
        [sys.executable, "-I", str(VERIFIER), str(path), *args],
        capture_output=True, text=True, cwd=path.parent, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_portable_writer_used_off_postgresql_is_verifiable_too(
    mixed_trail, fmt: str, tmp_path: Path
) -> None:
    path = tmp_path / f"portable.{fmt}"
    path.write_bytes(b"".join(exports._stream_portable(AuditEvent.objects.all(), fmt)))
    result = _verify(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 not yet sealed" in result.stdout


@pytest.fixture
def awkward_trail() -> None:
    """Values every formatting path must get exactly right."""
    from audit.log import Claimed

    awkward = ['q"uote', "back\\slash", "ctl\x01\x1f\x7f", "new\nline\ttab", "naïve “q” 日本 😀"]
    for n, value in enumerate(awkward):
        record(
            action="test.awkward",
            outcome=value[:32],
            actor=Claimed(value),
            session_id=value,
            data={"v": value, "n": n, "f": 1.5e-7, "deep": {"k": [value, None, True]}},
        )
    chain.seal_and_anchor()
    record(action="test.awkward", outcome="", data={"unsealed": awkward[0]})


def test_each_json_line_is_postgresqls_json_object_of_the_row(
    auditor_client: Client, awkward_trail
) -> None:
    # An independent rendering: json_build_object writes the same separators, to_json's
    # escaping and the jsonb text of data; occurred_at as the chain hashed it.
    from audit.canonical import INSTANT_SQL

    body = download(auditor_client, "jsonl").decode()  # first: it records audit.exported
    pairs = ", ".join(
        f"'{c}', {INSTANT_SQL if c == 'occurred_at' else c}" for c in exports.JSONL_COLUMNS
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT json_build_object({pairs})::text FROM audit_auditevent"  # noqa: S608
            " ORDER BY seq NULLS LAST, id"
        )
        expected = "".join(f"{row[0]}\n" for row in cursor.fetchall())
    assert body == expected


@pytest.mark.parametrize("start", exports.FORMULA_STARTS)
def test_every_formula_start_is_defused_and_nothing_else(
    auditor_client: Client, start: str
) -> None:
    record(action="test.cell", session_id=f"{start}x")
    record(action="test.cell", session_id=f"x{start}")
    record(action="test.cell", session_id="")
    body = download(auditor_client, "csv", "action=test.cell")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [r["session_id"] for r in rows] == [f"'{start}x", f"x{start}", ""]


def test_an_apostrophe_added_before_a_plain_cell_fails_verification(
    auditor_client: Client, tmp_path: Path
) -> None:
    """The verifier takes off only the "'" the export put before a formula's first
    character: "pending" edited into "'pending" is a changed row."""
    record(action="call.submitted", outcome="pending", session_id="run-1", data={"n": 1})
    record(action="call.submitted", outcome="=sum", session_id="-run", data={"n": 2})
    chain.seal_and_anchor()
    exported = download(auditor_client, "csv").decode()
    rows = list(csv.reader(io.StringIO(exported)))
    whole = tmp_path / "whole.csv"
    whole.write_text(exported)
    assert _verify(whole).returncode == 0, "cells the export defused verify as they were"
    header = rows[0]
    row = next(r for r in rows[1:] if r[header.index("outcome")] == "pending")
    row[header.index("outcome")] = "'pending"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    edited = tmp_path / "edited.csv"
    edited.write_text(buffer.getvalue())
    assert _verify(edited).returncode == 1


def test_the_verifier_knows_the_exports_guarded_columns_and_formula_starts() -> None:
    """The stand-alone script keeps its own copy (it imports nothing from Countersign)."""
    from audit import verify_export

    assert verify_export.FORMULA_GUARDED == exports.FORMULA_GUARDED
    assert verify_export.FORMULA_STARTS == exports.FORMULA_STARTS
    assert set(verify_export.COLUMNS) == set(exports.COLUMNS)


def _blank_seal(line: str, *, sealed_at: bool) -> str:
    """A JSON Lines row made to look not yet sealed, as an attacker would edit it."""
    row = json.loads(line)
    line = line.replace(f'"seq" : {row["seq"]}', '"seq" : null')
    for column in ("prev_hash", "hash"):
        line = line.replace(f'"{column}" : "{row[column]}"', f'"{column}" : ""')
    if sealed_at:
        line = line.replace(f'"sealed_at" : "{row["sealed_at"]}"', '"sealed_at" : null')
    return line


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_last_sealed_row_edited_and_its_seal_blanked_fails(
    auditor_client: Client, mixed_trail, tmp_path: Path, anchor_path: Path, fmt: str
) -> None:
    """seq, prev_hash and hash all blanked, so the edited row would count as not yet
    sealed and go unchecked: its sealed_at still says the sealer sealed it."""
    body = download(auditor_client, fmt).decode()
    last = AuditEvent.objects.exclude(seq=None).order_by("-seq").first()
    assert last is not None
    if fmt == "jsonl":
        lines = body.splitlines()
        index = next(i for i, line in enumerate(lines) if json.loads(line)["id"] == last.pk)
        lines[index] = _blank_seal(lines[index], sealed_at=False).replace(
            '"outcome" : "pending"', '"outcome" : "forged"'
        )
        edited = "\n".join(lines) + "\n"
    else:
        rows = list(csv.DictReader(io.StringIO(body)))
        row = next(r for r in rows if int(r["id"]) == last.pk)
        row.update(seq="", prev_hash="", hash="", outcome="forged")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        edited = buffer.getvalue()
    path = tmp_path / f"edited.{fmt}"
    path.write_text(edited)
    result = _verify(path, "--whole", "--anchor", str(anchor_path))
    assert result.returncode == 1, result.stdout
    assert f"id {last.pk}: was sealed (sealed_at) but has no seq" in result.stdout
    assert "does not match its hash" not in result.stdout, "every other row is as exported"


def test_a_whole_export_cut_short_of_an_anchor_older_than_an_event_it_holds_fails(
    auditor_client: Client, tmp_path: Path, anchor_path: Path
) -> None:
    """The last sealed row's seal blanked, sealed_at too (or the row cut): the export now
    ends before a seq the anchor recorded, yet it holds an event recorded after that
    anchor, so it was made after that seq was sealed: the seq was taken out of it."""
    make = [record(action="call.submitted", outcome="pending", data={"n": n}) for n in range(3)]
    chain.seal_and_anchor()
    time.sleep(1.2)  # past the verifier's allowance for hosts' clocks
    late = record(action="call.submitted", outcome="pending", data={"late": True})
    lines = download(auditor_client, "jsonl").decode().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert ids[-2] == late.pk and json.loads(lines[-2])["seq"] is None
    # Last, the export's own audit.exported: recorded later still, it is the row named below.
    assert json.loads(lines[-1])["action"] == "audit.exported"
    index = ids.index(make[-1].pk)
    head = json.loads(lines[index])["seq"]
    assert json.loads(anchor_path.read_text())["seq"] == head, "the last sealed row"
    lines[index] = _blank_seal(lines[index], sealed_at=True)
    blanked = tmp_path / "blanked.jsonl"
    blanked.write_text("\n".join(lines) + "\n")
    result = _verify(blanked, "--whole", "--anchor", str(anchor_path))
    assert result.returncode == 1, result.stdout
    assert (
        f"the anchor records seq {head} at {json.loads(anchor_path.read_text())['at']}, past "
        f"this export's last seq {head - 1}, yet the export holds id {ids[-1]}, recorded at "
        f"{json.loads(lines[-1])['occurred_at']}, after it: seq {head} was cut from the export"
    ) in result.stdout
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:index] + lines[index + 1 :]) + "\n")
    assert _verify(cut, "--whole", "--anchor", str(anchor_path)).returncode == 1

    honest = tmp_path / "honest.jsonl"
    honest.write_text(download(auditor_client, "jsonl").decode())
    result = _verify(honest, "--whole", "--anchor", str(anchor_path))
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_whole_export_without_a_sealed_row_fails(
    auditor_client: Client, mixed_trail, tmp_path: Path, fmt: str
) -> None:
    """Every sealed row cut, the rows not yet sealed kept: nothing was checked, and a
    whole export starts at seq 1."""
    body = download(auditor_client, fmt).decode()
    if fmt == "jsonl":
        kept = [line for line in body.splitlines() if json.loads(line)["seq"] is None]
        unsealed = "\n".join(kept) + "\n"
    else:
        header, *rows = body.splitlines(keepends=True)
        unsealed = header + "".join(r for r in rows if r.startswith(","))
    path = tmp_path / f"unsealed.{fmt}"
    path.write_text(unsealed)
    assert _verify(path).returncode == 0, "a filtered view may hold only unsealed rows"
    result = _verify(path, "--whole")
    assert result.returncode == 1, result.stdout
    assert "no sealed row: a whole export starts at seq 1" in result.stdout


# Windows' C long is 32 bits: the csv module refuses a larger field size limit there.
_WINDOWS_CSV = """
import csv, runpy, sys
limit = csv.field_size_limit
def field_size_limit(*new):
    if new and new[0] > 2**31 - 1:
        raise OverflowError("Python int too large to convert to C long")
    return limit(*new)
csv.field_size_limit = field_size_limit
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_csv_export_with_a_long_cell_verifies_where_a_c_long_is_32_bits(
    auditor_client: Client, tmp_path: Path
) -> None:
    """An auditor checks the CSV on Windows (where spreadsheets are): the verifier raised
    OverflowError before reading a row, setting the csv module's field size limit to
    sys.maxsize, which a C long there cannot hold. The cell is longer than the module's
    default limit (131,072 characters), so some limit has to be set."""
    record(action="call.submitted", outcome="pending", data={"note": "x" * 200_000})
    chain.seal_pending()
    path = tmp_path / "trail.csv"
    path.write_bytes(download(auditor_client, "csv"))
    result = subprocess.run(
        [sys.executable, "-I", "-c", _WINDOWS_CSV, str(VERIFIER), str(path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    sealed = AuditEvent.objects.exclude(seq=None).count()
    assert f"{sealed} sealed rows checked in 1 run(s)" in result.stdout


def _break_row(fmt: str, body: bytes) -> bytes:
    """The fourth row edited so that it is no row any more, as a hand edit or a cut leaves it:
    a JSON line that is not JSON, a CSV row whose seq is a word."""
    lines = body.decode().splitlines(keepends=True)
    at = 3 if fmt == "jsonl" else 4  # the CSV's first line is its header
    if fmt == "jsonl":
        lines[at] = lines[at][: len(lines[at]) // 2] + "\n"
    else:
        lines[at] = "seven" + lines[at][lines[at].index(",") :]
    return "".join(lines).encode()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_row_that_is_no_row_is_named_not_a_traceback(
    auditor_client: Client, mixed_trail, fmt: str, tmp_path: Path
) -> None:
    """The verifier stopped with a traceback (a JSON error, int() of a word) that named no
    row and said nothing of the rows it had checked."""
    path = tmp_path / f"trail.{fmt}"
    path.write_bytes(_break_row(fmt, download(auditor_client, fmt)))
    result = _verify(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "line 4: " in result.stdout if fmt == "jsonl" else "line 5: " in result.stdout
    assert "not a row of an export" in result.stdout
    assert "3 sealed rows checked" in result.stdout
    assert result.stdout.rstrip().endswith("BROKEN")


@pytest.mark.parametrize(
    "line",
    [
        "[1, 2]",
        '{"seq": "1", "id": 1}',
        '{"seq": true, "prev_hash": "", "hash": "", "id": 1, "occurred_at": "", "action": "",'
        ' "outcome": "", "actor_type": "", "actor_id": "", "actor_label": "", "agent_name": "",'
        ' "tool_name": "", "session_id": "", "call_id": null, "sealed_at": null, "data" : {}}',
    ],
)
def test_a_json_line_of_the_wrong_shape_is_named(line: str, tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    path.write_text(line + "\n")
    result = _verify(path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "line 1: " in result.stdout


GOOGLE_KEY = "AIzaSyD4x9Qk2LmN7pRt5VwXy8Zb3Cd6Ef1Gh0J"
DISCORD_TOKEN = "Vk3pQ9xZ2mL7nR4tW8yB1cF6hJ0kD5sG" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_google_api_key_and_a_discord_webhook_in_a_url_never_reach_an_export(
    auditor_client: Client, fmt: str
) -> None:
    """A fetch tool's URL with a Google Maps key in its query (``key=`` is no secret's name
    to the assignments), an upstream error quoting a Discord webhook's URL: both reached the
    trail, and every export, in clear."""
    record(
        action="call.submitted",
        outcome="pending",
        data={
            "arguments": {
                "url": f"https://maps.googleapis.com/maps/api/geocode/json?address=Oslo&key={GOOGLE_KEY}"
            },
            "error": f"POST https://discord.com/api/webhooks/112233445566778899/{DISCORD_TOKEN}: 429",
        },
    )
    chain.seal_and_anchor()
    body = download(auditor_client, fmt).decode()
    assert GOOGLE_KEY not in body
    assert DISCORD_TOKEN not in body
    assert "maps.googleapis.com" in body and "discord.com/api/webhooks/" in body


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_azure_subscription_key_header_never_reaches_an_export(
    auditor_client: Client, fmt: str
) -> None:
    """Azure's API Management key, a header an agent passes its HTTP tool (or quotes in its
    reasoning): 32 hex digits, which no key shape can tell from a hash, under a name no
    assignment knew."""
    azure_key = "3f2b9c0d4e5a6b7c8d9e0f1a2b3c4d5e"
    record(
        action="call.submitted",
        outcome="pending",
        data={
            "arguments": {"headers": {"Ocp-Apim-Subscription-Key": azure_key}},
            "reasoning": f"curl -H 'Ocp-Apim-Subscription-Key: {azure_key}' https://api.example",
        },
    )
    chain.seal_and_anchor()
    body = download(auditor_client, fmt).decode()
    assert azure_key not in body
    assert "Ocp-Apim-Subscription-Key" in body


AZURE_SIG = "Xk3%2Bq9PzR7t0aBcDeFgH1jKlMnOpQrStUvWxYz%2F0123%3D"
S3_SIGNATURE = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_signed_urls_signature_never_reaches_an_export(auditor_client: Client, fmt: str) -> None:
    """A tool's result handing back a shareable link: an Azure SAS URL or an S3 pre-signed
    one reads (or writes) the object for whoever holds it until it expires. Its signature,
    URL-encoded base64 or hex that no key shape tells from a hash, reached every export."""
    record(
        action="call.execution_finished",
        outcome="succeeded",
        data={
            "result": {
                "azure": "https://acct.blob.core.windows.net/c/f.pdf?sv=2022-11-02&sp=r"
                f"&se=2026-12-31T00:00:00Z&sig={AZURE_SIG}",
                "s3": "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={S3_SIGNATURE}",
            },
            "signals": ["new_recipient"],
            "arguments": {"signature": "Best regards, Ann", "sig": "Ann, of the refunds team"},
        },
    )
    chain.seal_and_anchor()
    body = download(auditor_client, fmt).decode()
    assert AZURE_SIG not in body and "Xk3+q9PzR7t0aBcDeFgH1" not in body
    assert S3_SIGNATURE not in body
    assert "new_recipient" in body, "the call's risk signals are no signature"
    assert "Best regards, Ann" in body, "an e-mail's signature is no signed URL's"
    assert "Ann, of the refunds team" in body, "nor is its sig, outside a URL's query"


def _csv_with_a_second_outcome_column(body: bytes) -> str:
    """Each row given a forged ``outcome`` cell in a new first column named ``outcome``: a
    spreadsheet shows it first, pandas reads it as the ``outcome``; the real cell is still
    there, further right."""
    lines = body.decode().splitlines(keepends=True)
    return "".join(("outcome," if n == 0 else "approved,") + line for n, line in enumerate(lines))


@pytest.mark.parametrize(
    "edit",
    [
        # A column the export never writes, with a value the chain never vouched for.
        lambda line: line.replace('{"seq" : ', '{"approved_by" : "cfo", "seq" : ', 1),
        # A key written twice: JSON leaves it to the reader which one counts.
        lambda line: line.replace('{"seq" : ', '{"outcome" : "approved", "seq" : ', 1),
    ],
    ids=["extra key", "duplicate key"],
)
def test_a_json_line_with_a_key_the_export_never_writes_twice_or_at_all_fails(
    auditor_client: Client, mixed_trail, tmp_path: Path, edit
) -> None:
    """Only the hashed values were checked: a key added to a row (or one written twice,
    which readers that take the first value show) passed as part of a verified row."""
    lines = download(auditor_client, "jsonl").decode().splitlines()
    lines[2] = edit(lines[2])
    path = tmp_path / "trail.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = _verify(path, "--whole")
    assert result.returncode == 1, result.stdout
    assert "line 3: " in result.stdout and "not a row of an export" in result.stdout


def test_a_csv_export_with_a_column_written_twice_fails(
    auditor_client: Client, mixed_trail, tmp_path: Path
) -> None:
    """csv.DictReader keeps the last of two columns of one name, so the verifier hashed the
    real outcome while a spreadsheet or pandas shows the forged one first."""
    path = tmp_path / "trail.csv"
    path.write_text(_csv_with_a_second_outcome_column(download(auditor_client, "csv")))
    result = _verify(path, "--whole")
    assert result.returncode == 1, result.stdout
    assert "line 1: " in result.stdout and "not a row of an export" in result.stdout


def test_a_csv_export_with_a_column_it_never_writes_fails(
    auditor_client: Client, mixed_trail, tmp_path: Path
) -> None:
    lines = download(auditor_client, "csv").decode().splitlines(keepends=True)
    forged = "".join(("approved_by," if n == 0 else "cfo,") + line for n, line in enumerate(lines))
    path = tmp_path / "trail.csv"
    path.write_text(forged)
    result = _verify(path, "--whole")
    assert result.returncode == 1, result.stdout
    assert "line 1: " in result.stdout and "not a row of an export" in result.stdout


def _rewritten_from(lines: list[str], seq: int) -> list[str]:
    """The export's chain rewritten end to end from ``seq``: that row's outcome forged and
    every hash from it recomputed, as someone with the database (and the script) could."""
    from audit import verify_export

    rewritten, previous = [], None
    for line in lines:
        row = next(verify_export._read_json_lines(io.StringIO(line + "\n")))
        if row["seq"] is not None and row["seq"] >= seq:
            if row["seq"] == seq:
                line = line.replace(f'"outcome" : "{row["outcome"]}"', '"outcome" : "forged"')
                row["outcome"] = "forged"
            prev_hash = previous if previous is not None else row["prev_hash"]
            new_hash = verify_export.link_hash(prev_hash, row)
            line = line.replace(row["prev_hash"], prev_hash).replace(row["hash"], new_hash)
            previous = new_hash
        rewritten.append(line)
    return rewritten


def test_a_forged_anchor_line_for_an_anchored_seq_makes_the_anchor_file_damaged(
    auditor_client: Client, mixed_trail, tmp_path: Path, anchor_path: Path
) -> None:
    """A second line for an anchored seq, appended with a rewritten chain's hash: the script
    kept the last line of each seq and said OK, where manage.py verify_audit (and the
    sealer) take a seq that does not increase for a damaged file."""
    lines = download(auditor_client, "jsonl").decode().splitlines()
    path = tmp_path / "rewritten.jsonl"
    path.write_text("\n".join(_rewritten_from(lines, 2)) + "\n")
    head = json.loads(anchor_path.read_text().splitlines()[-1])
    result = _verify(path, "--whole", "--anchor", str(anchor_path))
    assert result.returncode == 1 and f"seq {head['seq']}: differs from the anchor" in (
        result.stdout
    )

    forged_hash = json.loads(path.read_text().splitlines()[head["seq"] - 1])["hash"]
    forged = tmp_path / "forged-anchor.jsonl"
    forged.write_text(anchor_path.read_text() + json.dumps({**head, "hash": forged_hash}) + "\n")
    result = _verify(path, "--whole", "--anchor", str(forged))
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(
        f"cannot read the anchor file {forged}: line 2: seq {head['seq']} does not follow "
        f"seq {head['seq']}"
    ), result.stderr
    assert "OK" not in result.stdout


def test_a_formula_whose_apostrophe_was_taken_off_fails_verification(
    auditor_client: Client, mixed_trail, tmp_path: Path
) -> None:
    """The export writes '=HYPERLINK(...) so that a spreadsheet shows it as text; the same
    cell edited back into =HYPERLINK(...), which the spreadsheet runs, hashed the same and
    verified OK."""
    rows = list(csv.reader(io.StringIO(download(auditor_client, "csv").decode())))
    column = rows[0].index("session_id")
    row = next(r for r in rows[1:] if r[column].startswith("'=HYPERLINK"))
    row[column] = row[column][1:]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path = tmp_path / "armed.csv"
    path.write_text(buffer.getvalue())
    result = _verify(path)
    assert result.returncode == 1, result.stdout
    assert f"line {rows.index(row) + 1}: session_id starts a formula" in result.stdout


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_row_not_yet_sealed_put_among_sealed_rows_fails(
    auditor_client: Client, mixed_trail, fmt: str, tmp_path: Path
) -> None:
    """The export writes the rows not yet sealed last (the chain vouches for none of them).
    One put between sealed rows, as a forged event slipped into the story would be, was
    only counted, and the file verified OK."""
    lines = download(auditor_client, fmt).decode().splitlines(keepends=True)
    body = lines[1:] if fmt == "csv" else lines
    rows = (
        [json.loads(line) for line in body]
        if fmt == "jsonl"
        else list(csv.DictReader(io.StringIO("".join(lines))))
    )
    unsealed = next(i for i, row in enumerate(rows) if row["seq"] in (None, ""))
    moved = body.pop(unsealed)
    body.insert(2, moved)
    path = tmp_path / f"slipped.{fmt}"
    path.write_text("".join(lines[:1] if fmt == "csv" else []) + "".join(body))
    result = _verify(path)
    assert result.returncode == 1, result.stdout
    after = rows[2 if unsealed > 2 else 3]
    assert (
        f"seq {after['seq']}: follows id {rows[unsealed]['id']}, a row not yet sealed"
        in result.stdout
    )
