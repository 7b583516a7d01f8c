"""The sweep commands an operator runs by hand (``expire_pending``, ``run_sweeps``...): an
odd ``--loop`` is refused before anything runs, not after the first run with a traceback."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

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
