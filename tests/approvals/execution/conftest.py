"""Fixtures of the chaos scenarios: the shared fleet (two workers and the payments API
server), the scenarios' size, and the executor's short-lease settings in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.conftest import World
from tests.support import chaos
from tests.support.calls import ensure_refundable
from tests.support.chaos import Fleet
from tests.support.workers import purge_queue, running_worker
from tools_registry.models import Tool


@pytest.fixture(scope="module")
def fleet(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("chaos")
    purge_queue()
    with chaos.payments_server(tmp) as server, ExitStack() as stack:
        env = chaos.chaos_worker_env(server, tag="fleet")
        workers = [
            stack.enter_context(running_worker(concurrency=2, tmp_path=tmp, env=env))
            for _ in range(2)
        ]
        yield Fleet(server=server, workers=workers)


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> int:
    """How many times bigger each scenario is: 1 in CI, 10 with --soak."""
    return 10 if request.config.getoption("--soak") else 1


@pytest.fixture
def chaos_world(settings: Any, fleet: Fleet, live_world: World) -> World:
    """The executor's settings in this (the web and beat) process, for short leases; the
    workers get theirs from the environment (``chaos.chaos_worker_env``)."""
    purge_queue()
    settings.SANDBOX_PAYMENTS_URL = fleet.server.payments_url
    settings.EXECUTOR_RESEND_AFTER_SECONDS = 3
    settings.EXECUTOR_SOFT_LIMIT_GRACE_SECONDS = 1
    settings.EXECUTOR_HARD_LIMIT_GRACE_SECONDS = 2
    ensure_refundable()
    Tool.objects.filter(name__in=["send_email", "issue_refund", "delete_customer"]).update(
        timeout_seconds=1
    )
    return live_world


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if chaos.REPORTS:
        terminalreporter.section("chaos scenarios")
        for line in chaos.REPORTS:
            terminalreporter.write_line(line)
