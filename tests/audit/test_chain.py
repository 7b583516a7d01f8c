"""The hash chain: sealing order, and tampering detected and located by verify_audit."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.utils import timezone

from audit import anchor, chain, verify
from audit.canonical import GENESIS_HASH
from audit.log import record
from audit.models import ActorType, AuditEvent
from audit.verify import verify_chain
from tests.audit.conftest import make_events, tamper
from tests.support.operator import cancel_from_another_session, this_backend

pytestmark = pytest.mark.django_db


def verify_command(*args: str) -> str:
    out = StringIO()
    call_command("verify_audit", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def broken(*args: str) -> str:
    with pytest.raises(CommandError) as excinfo:
        verify_command(*args)
    return str(excinfo.value)


def test_sealing_links_every_event_to_the_one_before(sealed_chain) -> None:
    assert [e.seq for e in sealed_chain] == list(range(1, 13))
    assert sealed_chain[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(sealed_chain):
        assert after.prev_hash == before.hash
    for event in sealed_chain:
        assert chain.event_hash(event.prev_hash, event) == event.hash
    assert "audit chain ok: 12 events" in verify_command()


def test_an_anchor_file_that_cannot_be_read_is_a_clear_refusal(sealed_chain, tmp_path) -> None:
    """A directory given for --anchor was an IsADirectoryError's traceback."""
    assert "cannot read the anchor file" in broken("--anchor", str(tmp_path))


def test_an_unsealed_event_is_reported_not_failed() -> None:
    make_events(2)
    result = verify_chain()
    assert result.ok is True
    assert result.unsealed == 2
    assert result.checked == 0


def test_a_stalled_sealer_is_warned_of() -> None:
    """The chain holds, but an event that has waited ten minutes to be sealed says the
    sealer is not running: the events after it are not protected meanwhile."""
    make_events(2)
    assert verify_chain().warnings == []
    # Written eleven minutes ago (the trail's rows change only through the sealer).
    tamper(
        "UPDATE audit_auditevent SET occurred_at = %s WHERE seq IS NULL",
        [timezone.now() - timedelta(minutes=11)],
    )
    result = verify_chain()
    assert result.ok is True and result.unsealed == 2
    assert any("sealer is stalled or not running" in w for w in result.warnings)


def test_an_event_written_in_with_a_past_date_is_warned_of() -> None:
    """Whoever holds the app's database role may insert an event dated last month: it is
    sealed at the head and its link holds, but it follows events of today."""
    make_events(3)
    chain.seal_pending()
    assert not [w for w in verify_chain().warnings if "past date" in w]
    forged = AuditEvent.objects.create(
        action="call.approved",
        actor_type="user",
        actor_label="bob",
        occurred_at=timezone.now() - timedelta(days=30),
        data={},
    )
    make_events(1)
    chain.seal_pending()
    result = verify_chain()
    assert result.ok is True
    [warning] = [w for w in result.warnings if "past date" in w]
    assert f"seq 4 (id {forged.pk})" in warning


def test_an_altered_event_is_named(sealed_chain) -> None:
    victim = sealed_chain[4]
    tamper(
        "UPDATE audit_auditevent SET data = jsonb_set(data, '{note}', '\"harmless\"') WHERE id = %s",
        [victim.pk],
    )
    message = broken("--no-seal")
    assert f"broken at seq 5 (event id {victim.pk})" in message
    assert "altered" in message
    assert "4 events verified before it" in message


def test_an_altered_event_whose_hash_was_recomputed_is_named(sealed_chain) -> None:
    """Its own link holds (the hash matches the altered content), the next one does not. The
    walk named only the next event, as if events had been removed or reordered, never the
    one that was changed."""
    victim = sealed_chain[4]
    tamper("UPDATE audit_auditevent SET outcome = 'forged' WHERE id = %s", [victim.pk])
    victim.refresh_from_db()
    tamper(
        "UPDATE audit_auditevent SET hash = %s WHERE id = %s",
        [chain.event_hash(victim.prev_hash, victim), victim.pk],
    )
    message = broken("--no-seal")
    assert f"broken at seq 6 (event id {sealed_chain[5].pk})" in message
    assert f"seq 5 (event id {victim.pk}) was altered and its hash recomputed" in message
    assert "5 events verified before it" in message


def test_a_deleted_event_is_named(sealed_chain) -> None:
    tamper("DELETE FROM audit_auditevent WHERE seq = 7")
    message = broken("--no-seal")
    assert "broken at seq 7" in message
    assert "expected seq 7, found seq 8: events removed" in message


def test_two_swapped_events_are_named(sealed_chain) -> None:
    a, b = sealed_chain[2], sealed_chain[8]
    # Swap their places in the chain, hashes and all, the way a reorder would look.
    tamper("UPDATE audit_auditevent SET seq = -seq WHERE id IN (%s, %s)", [a.pk, b.pk])
    tamper(
        "UPDATE audit_auditevent SET seq = CASE id WHEN %s THEN %s ELSE %s END,"
        " prev_hash = CASE id WHEN %s THEN %s ELSE %s END,"
        " hash = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN (%s, %s)",
        [a.pk, b.seq, a.seq, a.pk, b.prev_hash, a.prev_hash, a.pk, b.hash, a.hash, a.pk, b.pk],
    )
    message = broken("--no-seal")
    # seq 3 now holds b's content under a's link: the content does not match the link.
    assert f"broken at seq 3 (event id {b.pk})" in message
    assert "altered" in message


def test_two_events_that_swapped_places_with_their_own_hashes_are_named(sealed_chain) -> None:
    a, b = sealed_chain[2], sealed_chain[3]
    tamper("UPDATE audit_auditevent SET seq = -seq WHERE id IN (%s, %s)", [a.pk, b.pk])
    tamper("UPDATE audit_auditevent SET seq = 4 WHERE id = %s", [a.pk])
    tamper("UPDATE audit_auditevent SET seq = 3 WHERE id = %s", [b.pk])
    message = broken("--no-seal")
    assert f"broken at seq 3 (event id {b.pk})" in message
    assert "reordered" in message


def test_a_chain_rewritten_end_to_end_is_caught_by_the_anchor(sealed_chain, anchor_path) -> None:
    victim = sealed_chain[5]
    tamper("UPDATE audit_auditevent SET outcome = 'forged' WHERE id = %s", [victim.pk])
    _rehash_everything()
    # Internally consistent again: only the anchor outside the database knows better.
    assert verify_chain(anchor_path=anchor_path.parent / "no-anchor.jsonl").ok is True
    message = broken("--no-seal")
    assert "broken at seq 12" in message  # the anchored head, at or after the forged event
    assert "the chain was rewritten from the start, at or before seq 12" in message


def test_the_anchor_locates_a_rewrite_between_two_anchors(anchor_path) -> None:
    make_events(4)
    chain.seal_and_anchor()  # anchor at seq 4
    make_events(4)
    chain.seal_and_anchor()  # anchor at seq 8
    victim = AuditEvent.objects.get(seq=6)
    tamper("UPDATE audit_auditevent SET outcome = 'forged' WHERE id = %s", [victim.pk])
    _rehash_everything()
    message = broken("--no-seal")
    assert "rewritten after seq 4, at or before seq 8" in message


def test_events_removed_from_the_end_are_caught_by_the_anchor(sealed_chain) -> None:
    tamper("DELETE FROM audit_auditevent WHERE seq > 9")
    message = broken("--no-seal")
    assert "records seq 12, but the chain ends at seq 9" in message


def test_a_chain_cut_below_its_anchor_and_grown_past_it_is_not_anchored_again(
    sealed_chain, anchor_path, auditor_client, caplog
) -> None:
    """The sealer re-used seqs 10 to 14 after the cut. Anchoring that head made the status
    panel, which compares the last anchor only, read "matches" until the next walk."""
    tamper("DELETE FROM audit_auditevent WHERE seq > 9")
    make_events(5)
    with caplog.at_level("ERROR", logger="audit.chain"):
        chain.seal_and_anchor()
    assert [a.seq for a in anchor.iter_anchors(anchor_path)] == [12]
    assert "no longer holds the hash anchored for seq 12" in caplog.text
    page = auditor_client.get("/audit/analytics/").content.decode()
    assert 'badge-bad">differs' in page


def test_write_anchor_reads_only_the_end_of_the_file(anchor_path) -> None:
    make_events(3)
    chain.seal_pending()
    first = AuditEvent.objects.get(seq=1).hash
    # A first line that is not an anchor at all: reading the whole file would choke on it.
    anchor_path.write_text("garbage that is not json\n" + "x" * 100_000 + "\n")
    anchor_path.write_text(
        anchor_path.read_text() + json.dumps({"seq": 1, "hash": first, "at": "t"}) + "\n"
    )
    written = chain.write_anchor()
    assert written is not None and written.seq == 3
    assert anchor.last_anchor(anchor_path) == anchor.Anchor(seq=3, hash=written.hash, at=written.at)
    assert chain.write_anchor() is None, "an unchanged head is not written twice"


def test_a_head_that_did_not_move_costs_the_sealer_one_query(
    anchor_path, django_assert_num_queries
) -> None:
    """The sealer anchors every few seconds, mostly with nothing new: reading where the chain
    ends is all it asks the database; whether the chain still holds the last anchor is asked
    only before a new line is written."""
    make_events(3)
    chain.seal_and_anchor()
    with django_assert_num_queries(1):
        assert chain.write_anchor() is None
    make_events(1)
    chain.seal_pending()
    with django_assert_num_queries(2):
        assert chain.write_anchor() is not None


def test_a_chain_rewritten_at_its_anchored_seq_is_not_anchored_again(
    sealed_chain, anchor_path, caplog
) -> None:
    last = anchor.last_anchor(anchor_path)
    assert last is not None
    tamper("UPDATE audit_auditevent SET hash = %s WHERE seq = %s", ["e" * 64, last.seq])
    with caplog.at_level("ERROR", logger="audit.chain"):
        assert chain.write_anchor() is None
    assert anchor.last_anchor(anchor_path) == last
    assert f"no longer holds the hash anchored for seq {last.seq}" in caplog.text


def test_a_damaged_anchor_file_fails_verification(sealed_chain, anchor_path) -> None:
    anchor_path.write_text(
        anchor_path.read_text() + '{"seq": 3, "hash": "' + "b" * 64 + '", "at": "t"}\n'
    )
    assert "anchor file" in broken("--no-seal")


def test_a_damaged_anchor_file_stops_no_sweep_and_is_logged(anchor_path, caplog) -> None:
    """A last line cut short (a full disk) or edited: the sealer goes on sealing, the
    sweeps after it go on running, and the damage is said in the log and by the walk."""
    make_events(3)
    chain.seal_and_anchor()
    with anchor_path.open("a") as handle:
        handle.write('{"seq": 4, "ha')
    make_events(2)
    with caplog.at_level("ERROR", logger="audit.chain"):
        call_command("run_sweeps", stdout=StringIO())
    assert not AuditEvent.objects.filter(hash="").exists(), "the new events are sealed"
    assert any(
        "anchor file" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records
    )
    assert "is damaged" in broken("--no-seal")


def test_an_anchor_file_named_on_the_command_line_must_exist(sealed_chain, tmp_path) -> None:
    """A typo in --anchor is no trail without anchors: walked without it, a cut tail passed."""
    tamper("DELETE FROM audit_auditevent WHERE seq > 9")
    message = broken("--no-seal", "--anchor", str(tmp_path / "typo.jsonl"))
    assert "cannot read the anchor file" in message
    assert "No such file" in message


@pytest.mark.parametrize(
    "cut",
    ["DELETE FROM audit_auditevent WHERE seq > 9", "DELETE FROM audit_auditevent WHERE seq = 5"],
)
def test_a_walk_broken_before_its_first_anchor_does_not_say_there_is_none(
    sealed_chain, cut: str
) -> None:
    """The anchor (at seq 12) is there, and the cut tail is found by it: "no anchor in the
    file" beside that verdict sent people looking for a deleted file."""
    tamper(cut)
    errors = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_audit", "--no-seal", stdout=StringIO(), stderr=errors)
    assert "no anchor" not in errors.getvalue()


def test_a_trail_with_no_anchor_at_all_is_warned_of(sealed_chain, anchor_path) -> None:
    anchor_path.unlink()
    errors = StringIO()
    call_command("verify_audit", "--no-seal", stdout=StringIO(), stderr=errors)
    assert "no anchor in" in errors.getvalue()


def test_an_event_with_a_hash_but_no_seq_is_named_as_such_not_as_the_anchor(
    sealed_chain,
) -> None:
    """Written around the sealer: the walk never reaches it, and the anchor is not at fault."""
    hidden = record(action="test.hidden", outcome="ok")
    tamper("UPDATE audit_auditevent SET hash = %s WHERE id = %s", ["f" * 64, hidden.pk])
    message = broken("--no-seal")
    assert f"events with a hash but no seq (ids [{hidden.pk}])" in message
    assert "anchor" not in message


def test_require_anchor_refuses_an_unanchored_chain(anchor_path) -> None:
    make_events(2)
    chain.seal_pending()
    assert "not anchored" in broken("--require-anchor")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("anchored", [False, True])
def test_a_walk_the_database_cuts_short_is_neither_ok_nor_broken(
    anchor_path, monkeypatch, anchored: bool
) -> None:
    """An operator's pg_cancel_backend (or a statement timeout) stops the walk half-way: it
    says the chain after that point is not verified, not that it holds, nor that events
    were removed."""
    # Rows big enough (40 MB in all) that the server is still sending when it is cancelled.
    # Inserted in bulk, not one by one through record(): its masking scans every byte (some
    # 20 ms an event), which was most of the test's time; the sealer chains them all the same.
    system = {"actor_type": ActorType.SYSTEM, "actor_label": "countersign"}
    AuditEvent.objects.bulk_create(
        AuditEvent(action="test.event", outcome="ok", data={"n": n, "pad": "x" * 16000}, **system)
        for n in range(2500)
    )
    chain.seal_pending()
    if anchored:
        chain.write_anchor()
    walker = this_backend()
    monkeypatch.setattr(verify, "PROGRESS_EVERY", 100)

    def cancel_once(checked: int, head: int) -> None:
        if checked == 100:
            cancel_from_another_session(walker)

    result = verify_chain(progress=cancel_once)
    assert result.interrupted and not result.ok, result
    assert 100 <= result.checked < 2500
    assert "interrupted" in result.reason and "removed" not in result.reason
    verify.record_verification(result)
    assert AuditEvent.objects.filter(action="audit.chain_verified").get().outcome == "incomplete"
    assert verify_chain().ok, "walked again, uninterrupted, the chain holds"


def test_the_outcome_can_be_recorded_in_the_trail(sealed_chain) -> None:
    verify_command("--record")
    event = AuditEvent.objects.filter(action="audit.chain_verified").get()
    assert event.outcome == "ok"
    assert event.data["checked"] == 12


@pytest.mark.django_db(transaction=True)
def test_an_event_committed_late_gets_a_later_seq_and_the_chain_holds() -> None:
    """A transaction that inserted first (lower id) but commits last is sealed last."""
    inserted, release = threading.Event(), threading.Event()
    late_id: list[int] = []

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                late_id.append(record(action="test.late", data={}).pk)
                inserted.set()
                release.wait(10)
        finally:
            connections.close_all()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert inserted.wait(10)
    early = record(action="test.early", data={})
    assert early.pk > late_id[0]
    assert chain.seal_pending() == 1, "the in-flight row is invisible, so not sealed"
    release.set()
    writer.join(10)
    assert chain.seal_pending() == 1
    late = AuditEvent.objects.get(pk=late_id[0])
    early.refresh_from_db()
    assert (early.seq, late.seq) == (1, 2)
    assert late.prev_hash == early.hash
    assert verify_chain().ok is True


@pytest.mark.django_db(transaction=True)
def test_a_second_sealer_gives_way_while_the_first_holds_the_lock() -> None:
    make_events(3)
    with transaction.atomic():
        assert chain._take_sealer_lock() is True
        other = threading.Thread(target=lambda: results.append(_seal_in_thread()))
        results: list[int] = []
        other.start()
        other.join(10)
    assert results == [0]
    assert chain.seal_pending() == 3


def _seal_in_thread() -> int:
    try:
        return chain.seal_pending()
    finally:
        connection.close()


def _rehash_everything() -> None:
    """What a thorough forger does after editing: recompute every link from the start."""
    prev_hash = GENESIS_HASH
    for event in AuditEvent.objects.filter(seq__isnull=False).order_by("seq"):
        head = chain.event_hash(prev_hash, event)
        tamper(
            "UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
            [prev_hash, head, event.pk],
        )
        prev_hash = head


def test_the_portable_walk_agrees_with_the_postgresql_walk(sealed_chain, monkeypatch) -> None:
    from audit import verify

    tamper("UPDATE audit_auditevent SET data = '{\"n\": 99}' WHERE seq = 8")
    fast = verify_chain()
    monkeypatch.setattr(verify, "sealed_rows", verify._rows_portable)
    portable = verify_chain()
    assert (fast.ok, fast.broken_seq, fast.reason) == (False, 8, portable.reason)
    assert portable.broken_seq == 8


@pytest.mark.django_db(transaction=True)
def test_a_walk_beside_a_busy_sealer_reports_no_tampering(anchor_path) -> None:
    """The sealer anchors new heads while the walk runs; none of them is a false alarm."""
    make_events(3000)
    chain.seal_and_anchor()
    stop = threading.Event()

    def keep_writing_and_sealing() -> None:
        try:
            while not stop.is_set():
                record(action="test.event", data={"n": 1})
                chain.seal_and_anchor()
        finally:
            connections.close_all()

    writer = threading.Thread(target=keep_writing_and_sealing)
    writer.start()
    try:
        results = [verify_chain(anchor_path=anchor_path) for _ in range(5)]
    finally:
        stop.set()
        writer.join()
    assert [r.reason for r in results if not r.ok] == []
    assert results[-1].anchors_checked >= 1
    # The file did grow during the walks: the race was real.
    assert anchor.last_anchor(anchor_path).seq > results[0].head_seq


@pytest.mark.django_db(transaction=True)
def test_a_cut_tail_is_still_found_when_the_walk_starts_after_it(anchor_path) -> None:
    make_events(20)
    chain.seal_and_anchor()
    tamper("DELETE FROM audit_auditevent WHERE seq > 15")
    result = verify_chain(anchor_path=anchor_path)
    assert result.ok is False
    assert "chain ends at seq 15" in result.reason


@pytest.mark.parametrize(
    "moment",
    [
        "2026-11-21T09:30:00+00:00",
        "2026-11-21T09:30:00.000001+00:00",
        "2026-03-29T01:59:59.5+02:00",
    ],
)
def test_postgresql_renders_an_instant_exactly_as_the_chain_does(moment: str) -> None:
    """The walk and the exports read instants rendered by SQL; the sealer hashed Python's."""
    from datetime import datetime

    from audit.canonical import INSTANT_SQL, instant

    with connection.cursor() as cursor:
        sql = f"SELECT {INSTANT_SQL} FROM (SELECT %s::timestamptz AS occurred_at) t"  # noqa: S608
        cursor.execute(sql, [moment])
        rendered = cursor.fetchone()[0]
    assert rendered == instant(datetime.fromisoformat(moment))


def test_a_head_read_before_another_sealer_anchored_past_it_raises_no_alarm(
    anchor_path, caplog
) -> None:
    """Two seal tasks at once (a worker with two processes, a second beat): one reads the
    head, the other seals on and anchors the later head first. The first then finds the file
    ahead of what it read; the chain still reaches that anchor, so nothing was removed, and
    the log told operators that events were."""
    make_events(3)
    chain.seal_pending()
    stale_seq, stale_hash = chain.chain_head()
    make_events(2)
    chain.seal_and_anchor()  # the other sealer
    with caplog.at_level("WARNING", logger="audit.anchor"):
        written = anchor.append_anchor(
            path=anchor_path, seq=stale_seq, head_hash=stale_hash, holds=chain.holds_anchor
        )
    assert written is None
    assert [a.seq for a in anchor.iter_anchors(anchor_path)] == [5]
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_a_chain_cut_below_its_anchor_is_still_warned_of_when_anchoring(
    sealed_chain, anchor_path, caplog
) -> None:
    tamper("DELETE FROM audit_auditevent WHERE seq > 9")
    with caplog.at_level("WARNING", logger="audit.anchor"):
        assert chain.write_anchor() is None
    assert "is behind the anchor's seq 12: events were removed" in caplog.text
