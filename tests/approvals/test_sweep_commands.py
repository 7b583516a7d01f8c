"""The sweep commands an operator runs by hand (``expire_pending``, ``run_sweeps``...): an
odd ``--loop`` is refused before anything runs, not after the first run with a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from approvals.models import Status, ToolCall
from tests.conftest import World
from tests.support import ROOT
from tests.support.calls import pending_call
from tests.support.workers import wait_for, worker_env

pytestmark = pytest.mark.django_db

COMMANDS = [
    "expire_pending",
    "expire_leases",
    "resend_approved",
    "reconcile_unknown",
    "fail_abandoned_reads",
    "run_sweeps",
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("loop", ["-1", "nan", "inf", "soon"])
def test_an_odd_loop_interval_is_refused_before_the_first_run(command: str, loop: str) -> None:
    out = StringIO()
    with pytest.raises(CommandError, match="--loop"):
        call_command(command, "--loop", loop, stdout=out)
    assert out.getvalue() == "", "nothing ran"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_sweep_command_runs_once_without_loop(command: str) -> None:
    out = StringIO()
    call_command(command, "--loop", "0", stdout=out)
    assert out.getvalue().count("\n") == 1


@pytest.mark.parametrize("command", ["run_sweeps", "expire_pending"])
def test_a_sweep_loop_outlives_a_failed_run(
    command: str, live_world: World, tmp_path: Path
) -> None:
    """``make run`` starts ``run_sweeps --loop 5`` once, with nothing to restart it: a run
    that failed (PostgreSQL restarted under it, SQLite's "database is locked") ended the
    loop, and no call expired, no webhook went and no reviewer was mailed from then on."""
    log_path = tmp_path / "sweeps.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", command, "--loop", "0.2"],
            cwd=ROOT,
            env=worker_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: log_path.read_text().count("\n") >= 1, message="a first run")
        # Every connection the loop holds is cut, as a restart of PostgreSQL cuts them.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        call = pending_call(live_world)
        ToolCall.objects.filter(pk=call.pk).update(expires_at=timezone.now())
        wait_for(
            lambda: (
                ToolCall.objects.get(pk=call.pk).status == Status.EXPIRED or proc.poll() is not None
            ),
            timeout=20,
            message="the expiry",
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert ToolCall.objects.get(pk=call.pk).status == Status.EXPIRED
        # It did fail, and said so, before the expiry: a step of the run (the rest of the
        # run went on, and may have expired the call itself) or the run.
        log_text = log_path.read_text()
        assert (
            "failed; the pass goes on" in log_text or "failed; the loop runs it again" in log_text
        ), log_text
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
