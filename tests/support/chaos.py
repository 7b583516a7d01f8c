"""The chaos harness: real worker processes, a real payments API server, faults, and the
checks every scenario ends with, read from the sandbox's own records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import redis
from django.conf import settings
from django.db.models import Count, Min, Q

from approvals import sweeps
from approvals.execution import send as executor_send
from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall, Verdict
from audit import chain
from audit.models import AuditEvent
from audit.verify import verify_chain
from config.celery import app
from sandbox.models import SandboxFault
from tests.conftest import World, sandbox_effects
from tests.support import ROOT
from tests.support.calls import approved_call
from tests.support.web import free_port
from tests.support.workers import Worker, running_worker, wait_for, worker_env

# Every chaos scenario's counts, printed at the end of the run (see
# tests/approvals/execution/conftest.py).
REPORTS: list[str] = []

# The chain is checked link by link; there is no anchor file outside a scenario's own.
NO_ANCHORS = Path("/nonexistent/countersign-anchor.jsonl")

# The executor's settings in the worker processes: short leases.
LEASE_GRACE_SECONDS = 2


class Server:
    """The app served by gunicorn: the sandbox payments API the refund tool calls."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def payments_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sandbox/payments/v1"

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@contextmanager
def payments_server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log_path = tmp_path / "payments-server.log"
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi",
        "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--worker-class", "gthread", "--threads", "16", "--timeout", "120",
    ]  # fmt: skip
    env = worker_env(SANDBOX_FAULTS="1", DB_POOL_MAX_SIZE="16", LOG_LEVEL="WARNING")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(proc, port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.HTTPError):
                probe = httpx.get(
                    f"{server.payments_url}/refunds/by-key/probe",
                    headers={"Authorization": f"Bearer {settings.SANDBOX_PAYMENTS_KEY}"},
                )
                if probe.status_code == 404:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"payments server did not start:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


@dataclass
class Fleet:
    """Two long-lived workers and the payments API server, shared by the chaos scenarios."""

    server: Server
    workers: list[Worker]

    def log_marks(self) -> list[int]:
        return [len(w.log) for w in self.workers]


def chaos_worker_env(server: Server, *, tag: str, **extra: str) -> dict[str, str]:
    return {
        "SANDBOX_FAULTS": "1",
        "SANDBOX_FAULT_TAG": tag,
        "SANDBOX_PAYMENTS_URL": server.payments_url,
        "EXECUTOR_LEASE_GRACE_SECONDS": str(LEASE_GRACE_SECONDS),
        # Celery's limits ride on each task, set by the process that sends it (the tests'
        # own, ``chaos_world``); the workers' need only fit inside their short lease.
        "EXECUTOR_SOFT_LIMIT_GRACE_SECONDS": "0",
        "EXECUTOR_HARD_LIMIT_GRACE_SECONDS": "1",
        "DB_POOL_MAX_SIZE": "2",
        **extra,
    }


@contextmanager
def victim_worker(
    server: Server, tmp_path: Path, *, queue: str, concurrency: int = 4
) -> Iterator[Worker]:
    """A worker of its own, on a queue of its own, that a scenario kills or pauses."""
    env = chaos_worker_env(server, tag="victim", CELERY_QUEUE=queue)
    with running_worker(concurrency=concurrency, tmp_path=tmp_path, env=env) as worker:
        yield worker


@contextmanager
def redis_server(port: int, tmp_path: Path) -> Iterator[Callable[[], None]]:
    """A Redis of the scenario's own, without persistence; yields a function that crashes
    it (SIGKILL) and starts it again, empty: everything queued or unacknowledged is lost.
    The shared Redis is never touched."""
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / f"redis-{port}.log").open("ab")

    def start() -> None:
        procs.append(
            subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )  # fmt: skip
        client = redis.Redis(port=port, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), timeout=10, message=f"redis on {port}")

    def restart() -> None:
        procs[-1].kill()
        procs[-1].wait(10)
        start()

    start()
    try:
        yield restart
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        log.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# --- Calls ------------------------------------------------------------------------------


@contextmanager
def approvals_not_sent() -> Iterator[None]:
    """Approve without the on-commit send, so a scenario decides where the tasks go.

    ``executor_send.send_execution`` is looked up when the decision registers its on-commit
    callback, so replacing it here holds back exactly the approvals made in this block.
    """
    original = executor_send.send_execution
    executor_send.send_execution = lambda call_id: None  # type: ignore[assignment]
    try:
        yield
    finally:
        executor_send.send_execution = original  # type: ignore[assignment]


def approved_calls(world: World, tool: str, n: int) -> list[UUID]:
    with approvals_not_sent():
        return [approved_call(world, tool).pk for _ in range(n)]


def send(call_ids: Iterable[UUID], *, times: int = 1, queue: str | None = None) -> int:
    """Deliver each call's task ``times`` times, as a duplicating broker would."""
    sent = 0
    with app.producer_or_acquire() as producer:
        for call_id in call_ids:
            limits = executor_send.time_limits(call_id)
            for _ in range(times):
                execute_call.apply_async((str(call_id),), queue=queue, producer=producer, **limits)
                sent += 1
    return sent


def purge(queue: str) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def queue_length(queue: str) -> int:
    return int(redis.Redis.from_url(settings.REDIS_URL).llen(queue))


def fault(point: str, *, tool: str = "", tag: str = "", **fields: Any) -> SandboxFault:
    return SandboxFault.objects.create(point=point, tool=tool, tag=tag, **fields)


def hits(*faults: SandboxFault) -> int:
    return sum(SandboxFault.objects.get(pk=f.pk).hits for f in faults)


def statuses(call_ids: Iterable[UUID]) -> Counter[str]:
    return Counter(ToolCall.objects.filter(pk__in=list(call_ids)).values_list("status", flat=True))


# --- Settling and the checks ------------------------------------------------------------


def settled(call_ids: list[UUID]) -> bool:
    """Every call terminal, or unknown and escalated to a person."""
    open_calls = (
        ToolCall.objects.filter(pk__in=call_ids)
        .exclude(status__in=[Status.SUCCEEDED, Status.FAILED, Status.REJECTED, Status.EXPIRED])
        .exclude(status=Status.UNKNOWN, needs_attention=True)
    )
    return not open_calls.exists()


def settle(call_ids: list[UUID], *, timeout: float = 40, tick: float = 0.25) -> int:
    """Run the sweeps as beat would, until every call settled; returns how many passes."""
    passes = 0
    deadline = time.monotonic() + timeout
    while True:
        sweeps.run_all()
        passes += 1
        if settled(call_ids):
            return passes
        if time.monotonic() > deadline:
            raise AssertionError(
                f"calls still open after {timeout}s of sweeps: {dict(statuses(call_ids))}"
            )
        time.sleep(tick)


@dataclass
class Report:
    scenario: str
    calls: int
    statuses: dict[str, int]
    effects: int
    deliveries: int
    counts: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()) if v)
        states = " ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{self.scenario}: calls={self.calls} [{states}] effects={self.effects} "
            f"requests_at_sinks={self.deliveries} {extra}"
        ).rstrip()


AUDITED = {
    "call.lease_expired": "leases_expired",
    "call.stale_result_discarded": "stale_results_refused",
    "call.rerun": "reruns",
    "call.execution_resent": "resent",
    "call.reconciled": "reconciled",
    "call.escalated": "escalated",
}


def check(
    scenario: str, call_ids: list[UUID], *, anchor_path: Path | None = None, **counts: int
) -> Report:
    """The invariants, from the sandbox's own records (``manage.py sandbox_effects``) and
    the audit table. Prints and returns the scenario's counts.

    The audit chain is verified against ``anchor_path`` when a scenario's own process wrote
    anchors there; the database is emptied between tests, so no other anchor file fits.
    """
    effects = sandbox_effects()
    calls = {
        c.execution_key: c
        for c in ToolCall.objects.filter(pk__in=call_ids).annotate(
            approvals=Count("decisions", filter=Q(decisions__verdict=Verdict.APPROVE))
        )
    }
    assert len(calls) == len(call_ids)

    # 1. At most one effect per idempotency key, and every effect is one of these calls'.
    per_key = Counter(e["idempotency_key"] for e in effects)
    assert [k for k, n in per_key.items() if n > 1] == [], "an idempotency key took effect twice"
    strangers = [e for e in effects if e["idempotency_key"] not in calls]
    assert strangers == [], "an effect that no call of this scenario asked for"

    # 2. No effect without an approval and an intent event committed before it.
    marks = _audit_marks(list(calls.values()))
    for effect in effects:
        call = calls[effect["idempotency_key"]]
        at = datetime.fromisoformat(effect["at"])
        approved_at, first_intent = marks.get(call.pk, (None, None))
        assert call.approvals >= max(call.approvals_required, 1), (
            f"effect without approval: {call.pk}"
        )
        assert approved_at is not None, f"no call.approved event for {call.pk}"
        assert first_intent is not None, f"effect without an intent event: {call.pk}"
        assert approved_at <= first_intent < at, (
            f"{call.pk}: approved {approved_at}, intent {first_intent}, effect {at}"
        )

    # 3. Every call terminal, or unknown and escalated; one effect per succeeded call (its
    #    stable key) with the result the call reports; none for a failed call.
    by_key = {e["idempotency_key"]: e for e in effects}
    for key, call in calls.items():
        assert call.status in (Status.SUCCEEDED, Status.FAILED) or (
            call.status == Status.UNKNOWN and call.needs_attention
        ), f"{call.pk} is {call.status} after the sweeps (needs_attention={call.needs_attention})"
        if call.status == Status.SUCCEEDED:
            assert key in by_key, f"{call.pk} succeeded without an effect"
            assert call.result == by_key[key]["result"], (
                f"{call.pk}: result differs from the effect"
            )
        if call.status == Status.FAILED:
            assert key not in by_key, f"{call.pk} failed but its effect happened"

    # 4. The audit trail still verifies.
    chain.seal_pending()
    verification = verify_chain(anchor_path=anchor_path or NO_ANCHORS)
    assert verification.ok, verification.reason

    audited = Counter(
        AuditEvent.objects.filter(call_id__in=call_ids, action__in=list(AUDITED)).values_list(
            "action", flat=True
        )
    )
    report = Report(
        scenario=scenario,
        calls=len(calls),
        statuses=dict(Counter(c.status for c in calls.values())),
        effects=len(effects),
        deliveries=sum(e["deliveries"] for e in effects),
        counts={**{AUDITED[a]: n for a, n in audited.items()}, **counts},
    )
    REPORTS.append(report.line())
    print(report.line())
    return report


def _audit_marks(calls: list[ToolCall]) -> dict[UUID, tuple[datetime | None, datetime | None]]:
    """Per call: when it was approved, and its first intent event (both committed rows)."""
    rows = (
        AuditEvent.objects.filter(
            call_id__in=[c.pk for c in calls],
            action__in=["call.approved", "call.execution_started"],
        )
        .values("call_id", "action")
        .annotate(first=Min("occurred_at"))
    )
    marks: dict[UUID, list[datetime | None]] = {c.pk: [None, None] for c in calls}
    for row in rows:
        marks[row["call_id"]][0 if row["action"] == "call.approved" else 1] = row["first"]
    return {k: (v[0], v[1]) for k, v in marks.items()}


def queue_name(label: str) -> str:
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}-{label}-{uuid.uuid4().hex[:6]}"


def wait_until(predicate: Any, *, timeout: float = 20, message: str = "condition") -> None:
    wait_for(predicate, timeout=timeout, interval=0.02, message=message)
