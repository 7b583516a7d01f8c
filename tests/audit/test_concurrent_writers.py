"""Concurrent writers in real processes, with sealers running beside them, leave one
unbroken chain: no fork, no gap, no event lost or sealed twice."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from audit import anchor, chain
from audit.models import AuditEvent
from audit.verify import verify_chain
from tests.support import ROOT
from tests.support.workers import worker_env

WRITERS = 8
EVENTS_EACH = 500


def _sealer(stop: threading.Event, passes: list[int]) -> None:
    try:
        while not stop.is_set():
            passes.append(chain.seal_pending(batch_size=300))
            time.sleep(0.01)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_eight_writer_processes_leave_one_unbroken_chain(tmp_path: Path) -> None:
    go = tmp_path / "go"
    # One process per writer, each with its own connection, forked after one Django start-up
    # (eight start-ups took most of the test's time).
    tags = [arg for i in range(WRITERS) for arg in ("--tag", f"w{i}")]
    writers = subprocess.Popen(
        [sys.executable, "-m", "tests.support.audit_writer", *tags,
         "--count", str(EVENTS_EACH), "--go", str(go)],
        cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    # Two sealers race each other as well as the writers; the advisory lock admits one.
    stop, passes = threading.Event(), []
    sealers = [threading.Thread(target=_sealer, args=(stop, passes)) for _ in range(2)]
    for sealer in sealers:
        sealer.start()
    try:
        go.touch()
        output, _ = writers.communicate(timeout=120)
        assert writers.returncode == 0, output.decode()[-2000:]
    finally:
        stop.set()
        for sealer in sealers:
            sealer.join(30)
    chain.seal_pending()

    total = WRITERS * EVENTS_EACH
    assert sum(passes) > 0, "the sealers ran while the writers wrote"
    assert AuditEvent.objects.count() == total
    assert AuditEvent.objects.filter(hash="").count() == 0
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(
        range(1, total + 1)
    )
    result = verify_chain()
    assert result.ok, result.reason
    assert result.checked == total
    # Each writer's events are in the chain once, in the order that writer committed them.
    for i in range(WRITERS):
        numbers = list(
            AuditEvent.objects.filter(session_id=f"w{i}")
            .order_by("seq")
            .values_list("data__n", flat=True)
        )
        assert numbers == list(range(EVENTS_EACH))


@pytest.mark.django_db(transaction=True)
def test_two_sealer_processes_beside_the_writers_never_fork_and_anchor_in_order(
    tmp_path: Path,
) -> None:
    """Two beat processes by mistake: two sealer processes seal and anchor in a loop while
    writer processes write. Each seq is given once, the chain is one, the anchor file's
    seqs only increase and each names the chain's hash there, and neither sealer tells the
    log that events were removed (one that read the head before the other anchored past it
    did)."""
    go, stop = tmp_path / "go", tmp_path / "stop"
    anchor_file = tmp_path / "anchor.jsonl"
    env = worker_env(AUDIT_ANCHOR_PATH=str(anchor_file))
    sealers = subprocess.Popen(
        [sys.executable, "-m", "tests.support.audit_sealer", "--sealers", "2",
         "--go", str(go), "--stop", str(stop)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tags = [arg for i in range(4) for arg in ("--tag", f"w{i}")]
    writers = subprocess.Popen(
        [sys.executable, "-m", "tests.support.audit_writer", *tags,
         "--count", "400", "--go", str(go)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        go.touch()
        output, _ = writers.communicate(timeout=120)
        assert writers.returncode == 0, output.decode()[-2000:]
        time.sleep(1)  # the sealers catch up
    finally:
        stop.touch()
        out, err = sealers.communicate(timeout=60)
    assert sealers.returncode == 0, err[-2000:]
    counts = [int(line) for line in out.split()]
    assert len(counts) == 2 and all(counts), f"both sealers sealed: {counts}"
    assert "removed" not in err and "no longer holds" not in err, err[-2000:]

    total = 4 * 400
    assert sum(counts) == total, "every event was sealed once, by one of them"
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(
        range(1, total + 1)
    )
    lines = anchor.iter_anchors(anchor_file)
    hashes = dict(AuditEvent.objects.values_list("seq", "hash"))
    anchored = [(a.seq, a.hash) for a in lines]
    assert anchored and all(hashes[seq] == head for seq, head in anchored)
    result = verify_chain(anchor_path=anchor_file)
    assert result.ok, result.reason
    assert result.checked == total
