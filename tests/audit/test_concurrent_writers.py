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

from audit import chain
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
