"""The soak's fault driver (``bench/soak.py``): one thread per fault, each making its own
calls through the product's services and acting its fault out on them, all at once and
beside the producers' steady load. The driver holds every send back on commit
(``chaos.approvals_not_sent``) and routes each call's task itself:

* kill -9 before, during or after the effect: a victim worker of its own (queue, fault
  tag) takes a batch, each of its processes is held at the moment (a ``SandboxFault``
  hold, or the upstream test server holding that key's request), and the whole worker is
  killed with SIGKILL. What its queue still held is lost with it;
* SIGSTOP past the lease: a victim holds some calls before their effect and some after,
  is paused, its holds are released, the sweeps take its calls over once the leases
  pass; then SIGCONT, and its late results must be refused by the fence;
* Redis restarted with tasks queued: a batch is sent to a queue nobody consumes and
  Redis is killed and started again, empty (everything queued anywhere is lost);
* the web process killed between commit and send: a process of its own approves a batch
  in one transaction and is killed by its first on-commit callback;
* a timeout after the effect: the ``timeout`` worker's sinks (and the upstream servers,
  per key) take the effect, then answer after the tool's timeout;
* a slow downstream: the ``slow`` worker's sinks (and the upstream servers) wait a random
  time before and after the effect, around the tool's timeout.

The re-sends, lease expiry and reconciliation are never driven from here: beat sends the
sweeps to the fleet every 5 s, as in production.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import redis
from django.db import connections

from approvals.execution import send as executor_send
from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall
from audit.models import AuditEvent
from bench._soak_calls import SINKS, Made, SoakWorld, by_person, make_call, marker, sinks_cycle
from config.celery import app
from sandbox.models import SandboxFault
from tests.support import ROOT, chaos
from tests.support.upstreams import control
from tests.support.web import WebProcess
from tests.support.workers import Worker, running_worker

Point = SandboxFault.Point
SOAK = Path(__file__).resolve().parent / "soak.py"
log = logging.getLogger("soak")

# A victim worker's processes, and how many calls each of its rounds makes.
VICTIM_CONCURRENCY = 5
VICTIM_READY_SECONDS = 120
ROUND_CALLS = 20
# Held tasks must outlive their hold: Celery's time limits on them are this long.
HELD_LIMITS = {"soft_time_limit": 120.0, "time_limit": 130.0}
KILL_POINTS = {
    "kill_before": Point.HANDLER_START,  # claimed, intent committed, nothing sent
    "kill_during": Point.BEFORE_EFFECT,  # the request is at the sink, not yet applied
    "kill_after": Point.AFTER_EFFECT,  # applied; the answer has not come back
}
# Before the effect, an MCP server (which cannot tell that its client left) would still
# apply it: only the sinks that can be stopped before their effect take part.
KILL_SINKS: dict[str, tuple[str, ...] | None] = {
    "kill_before": ("email", "refund", "order"),
    "kill_during": None,
    "kill_after": None,
}


@dataclass
class Rig:
    """What the fault threads share: the world, the processes, and the counts they keep."""

    world: SoakWorld
    server: chaos.Server
    http: WebProcess
    mcp: WebProcess
    logs: Path
    main_queue: str
    worker_env: dict[str, str]
    restart_redis: Callable[[], None]
    timeout: float  # every soak tool's timeout
    rng: random.Random
    counts: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _origins: Iterator[int] = field(default_factory=itertools.count)
    _cycles: dict[str, Iterator[str]] = field(default_factory=dict)
    _people: Counter[str] = field(default_factory=Counter)

    # --- calls ----------------------------------------------------------------------------

    def make(self, kind: str, n: int, sinks: tuple[str, ...] | None = None) -> list[Made]:
        """``n`` approved calls of this fault kind, sends held back (the driver routes them)."""
        with self.lock:
            origin = f"d{next(self._origins)}"
            cycle = self._cycles.setdefault(kind, sinks_cycle(sinks))
        made = []
        for i in range(n):
            with self.lock:
                person = by_person(self._people[kind])
                self._people[kind] += 1
            made.append(
                make_call(
                    self.world, next(cycle), marker(kind, origin, i), kind=kind, by_person=person
                )
            )
        self.count(kind, calls=n)
        return made

    def send(self, made: list[Made], *, queue: str, held: bool = False) -> None:
        """Each call's task, once, to ``queue``: with Celery's limits as the product sets
        them, or long ones for a task that must wait at a hold."""
        for attempt in itertools.count():
            try:
                with app.producer_or_acquire() as producer:
                    for m in made:
                        limits = HELD_LIMITS if held else executor_send.time_limits(m.call_id)
                        execute_call.apply_async(
                            (str(m.call_id),), queue=queue, producer=producer, **limits
                        )
                return
            except Exception:
                if attempt >= 20:
                    raise
                time.sleep(0.5)  # the broker is restarting; a repeat is harmless

    def count(self, kind: str, **n: int) -> None:
        with self.lock:
            self.counts[kind].update(n)

    # --- the upstream test servers' faults --------------------------------------------

    def _server(self, sink: str) -> WebProcess:
        return self.http if sink == "order" else self.mcp

    def upstream_faults(
        self, made: list[Made], fault_for: Callable[[Made], dict[str, Any] | None]
    ) -> None:
        """Faults the upstream servers act out on the first request of each call's key."""
        per_server: dict[str, dict[str, Any]] = defaultdict(dict)
        for m in made:
            if not SINKS[m.sink].code and (spec := fault_for(m)):
                per_server[self._server(m.sink).url][m.key] = spec
        for web in (self.http, self.mcp):
            if per_server[web.url]:
                control(web, key_faults=per_server[web.url])

    def release(self, made: list[Made]) -> None:
        keys = [m.key for m in made if not SINKS[m.sink].code]
        for web in (self.http, self.mcp):
            control(web, release=keys)

    def upstream_held(self, made: list[Made]) -> int:
        keys = {m.key for m in made}
        held = 0
        for web in (self.http, self.mcp):
            held += len(keys.intersection(httpx.get(f"{web.url}/_held", timeout=5).json()))
        return held

    # --- victims ----------------------------------------------------------------------

    @contextmanager
    def victims(self) -> Iterator[VictimPool]:
        pool = VictimPool(self)
        try:
            yield pool
        finally:
            pool.close()

    def wait_held(self, made: list[Made], faults: list[SandboxFault]) -> list[UUID]:
        """Wait until every process of the victim is held (or, once one is, until the
        remote holds come close to the tool's timeout, when the worker would give up
        waiting for its answer by itself); the calls executing then. A victim that takes
        nothing for 20 s (its consumer wedged by a Redis restart) is given up on."""
        first: float | None = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            held = chaos.hits(*faults) + self.upstream_held(made)
            now = time.monotonic()
            if held and first is None:
                first = now
            if held >= VICTIM_CONCURRENCY or (first and now - first > 0.6 * self.timeout):
                break
            time.sleep(0.1)
        return executing(made)


@dataclass
class Victim:
    """A worker of its own (queue and fault tag) for one round."""

    worker: Worker
    tag: str
    queue: str
    context: AbstractContextManager[Worker]

    def close(self) -> None:
        """Stop it (if still alive); release its holds; purge its queue: what was left
        there is lost, for the re-send sweep to find."""
        self.context.__exit__(None, None, None)
        SandboxFault.objects.filter(tag=self.tag).update(hold=False)
        _tolerate_broker(lambda: chaos.purge(self.queue))


class VictimPool:
    """Victims for one thread's rounds; the next one starts while a round runs (a worker
    takes seconds to start on a loaded machine)."""

    def __init__(self, rig: Rig):
        self.rig = rig
        self.starter = ThreadPoolExecutor(max_workers=1)
        self.next: Future[Victim] | None = None

    def _start(self) -> Victim:
        try:
            with self.rig.lock:
                tag = f"victim{next(self.rig._origins)}"
            queue = f"{self.rig.main_queue}-{tag}"
            env = chaos.chaos_worker_env(
                self.rig.server, tag=tag, CELERY_QUEUE=queue, **self.rig.worker_env
            )
            # A victim starts while the soak's load holds the machine's cores: its five
            # children took more than the tests' 30 s to be ready on a slow 2-core machine.
            context = running_worker(
                concurrency=VICTIM_CONCURRENCY,
                tmp_path=self.rig.logs,
                env=env,
                ready_within=VICTIM_READY_SECONDS,
            )
            return Victim(worker=context.__enter__(), tag=tag, queue=queue, context=context)
        finally:
            connections.close_all()

    def take(self) -> Victim:
        current = self.next or self.starter.submit(self._start)
        self.next = self.starter.submit(self._start)
        return current.result()

    def close(self) -> None:
        if self.next is not None:
            self.next.result().close()
        self.starter.shutdown()


def executing(made: list[Made]) -> list[UUID]:
    return list(
        ToolCall.objects.filter(
            pk__in=[m.call_id for m in made], status=Status.EXECUTING
        ).values_list("pk", flat=True)
    )


def audited(action: str, call_ids: list[UUID]) -> set[UUID]:
    return set(
        AuditEvent.objects.filter(call_id__in=call_ids, action=action).values_list(
            "call_id", flat=True
        )
    )


def _tolerate_broker(work: Callable[[], Any]) -> Any:
    for _ in range(50):
        try:
            return work()
        except (redis.RedisError, OSError, ConnectionError):
            time.sleep(0.2)
    return None


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# --- The fault threads ------------------------------------------------------------------


def kill_rounds(rig: Rig, quotas: dict[str, int]) -> None:
    """kill -9 of a victim worker, before, during and after the effect, in turn."""
    with rig.victims() as pool:
        while any(quotas.values()):
            for kind in KILL_POINTS:
                n = min(ROUND_CALLS, quotas[kind])
                if n:
                    kill_round(rig, pool.take(), kind, n)
                    quotas[kind] -= n


def kill_round(rig: Rig, victim: Victim, kind: str, n: int) -> None:
    started = time.monotonic()
    try:
        holds = [chaos.fault(KILL_POINTS[kind], tag=victim.tag, hold=True)]
        made = rig.make(kind, n, KILL_SINKS[kind])
        made_at = time.monotonic()
        at = "after" if kind == "kill_after" else "before"
        rig.upstream_faults(made, lambda m: {"hold": at, "abandon": kind == "kill_before"})
        rig.send(made, queue=victim.queue, held=True)
        sent_at = time.monotonic()
        in_flight = rig.wait_held(made, holds)
        held_at = time.monotonic()
        victim.worker.signal_group(signal.SIGKILL)  # the whole group: parent and children
        victim.worker.proc.wait(10)
        rig.release(made)
    finally:
        victim.close()
    rig.count(kind, rounds=1, in_flight=len(in_flight), victim_queue=n - len(in_flight))
    log.info(
        "%s: %d calls, %d in flight; made in %.1f s, sent in %.1f s, held after %.1f s, "
        "round %.1f s",
        kind, n, len(in_flight), made_at - started, sent_at - made_at, held_at - sent_at,
        time.monotonic() - started,
    )  # fmt: skip


def sigstop_rounds(rig: Rig, quota: int) -> None:
    with rig.victims() as pool:
        while quota:
            n = min(ROUND_CALLS, quota)
            sigstop_round(rig, pool.take(), n)
            quota -= n


def sigstop_round(rig: Rig, victim: Victim, n: int) -> None:
    """Held before the effect (two code-tool calls, odd upstream calls) and after it (two,
    and even upstream calls), then paused past the leases, then resumed."""
    started = time.monotonic()
    tag, queue = victim.tag, victim.queue
    try:
        holds = [
            chaos.fault(Point.HANDLER_START, tag=tag, hold=True, remaining=2),
            chaos.fault(Point.AFTER_EFFECT, tag=tag, hold=True, remaining=2),
        ]
        made = rig.make("sigstop", n)
        parity = itertools.count()
        rig.upstream_faults(made, lambda m: {"hold": "after" if next(parity) % 2 else "before"})
        rig.send(made, queue=queue, held=True)
        zombies = rig.wait_held(made, holds)
        victim.worker.signal_group(signal.SIGSTOP)
        paused = time.monotonic()
        try:
            SandboxFault.objects.filter(tag=tag).update(hold=False)  # seen when they wake
            rig.release(made)
            _tolerate_broker(lambda: chaos.purge(queue))  # it takes nothing more on waking
            # Beat's sweeps take the paused worker's calls over once their leases pass:
            # lease, then up to two sweeps, and slack for a loaded machine.
            expired = _wait(lambda: taken_over(zombies), timeout=rig.timeout + 60)
        finally:
            victim.worker.signal_group(signal.SIGCONT)
        resumed = time.monotonic()
        _wait(lambda: len(late_outcomes_heard(zombies)) == len(zombies), 30)
    finally:
        victim.close()
    refused = len(audited("call.stale_result_discarded", zombies))
    # A late verdict settles a call still unknown and untouched since its lease expired.
    accepted = len(audited("call.late_result_accepted", zombies))
    rig.count(
        "sigstop",
        rounds=1,
        in_flight=len(zombies),
        stale_refused=refused,
        late_accepted=accepted,
        not_taken_over=0 if expired else 1,
    )
    log.info(
        "sigstop: %d calls, %d paused in flight, %d late results refused, %d accepted; "
        "paused %.1f s, round %.1f s",
        n, len(zombies), refused, accepted, resumed - paused, time.monotonic() - started,
    )  # fmt: skip


def late_outcomes_heard(zombies: list[UUID]) -> set[UUID]:
    """The paused worker's calls whose late outcome came back: refused or accepted."""
    return audited("call.stale_result_discarded", zombies) | audited(
        "call.late_result_accepted", zombies
    )


def taken_over(zombies: list[UUID]) -> bool:
    expired = audited("call.lease_expired", zombies)
    done = set(
        ToolCall.objects.filter(
            pk__in=zombies, status__in=[Status.SUCCEEDED, Status.FAILED]
        ).values_list("pk", flat=True)
    )
    return set(zombies) <= expired | done


def redis_rounds(rig: Rig, quota: int, *, batch: int, pause: float) -> None:
    """A batch queued where nobody consumes it, then Redis killed and started empty."""
    queue = f"{rig.main_queue}-parked"
    while quota:
        n = min(batch, quota)
        made = rig.make("redis_restart", n)
        rig.send(made, queue=queue)
        queued = _tolerate_broker(lambda: chaos.queue_length(queue)) or 0
        rig.restart_redis()
        rig.count("redis_restart", rounds=1, lost_messages=queued)
        log.info("redis restarted with %d tasks queued (%d of them this round's)", queued, n)
        quota -= n
        time.sleep(pause)


def web_kill_rounds(rig: Rig, quota: int, *, batch: int, pause: float) -> None:
    r = 0
    while quota:
        n = min(batch, quota)
        web = subprocess.run(
            [sys.executable, str(SOAK), "--role", "web-kill", "--origin", f"w{r}",
             "--count", str(n)],
            cwd=ROOT, env=os.environ.copy(), capture_output=True, timeout=300,
        )  # fmt: skip
        if web.returncode != -signal.SIGKILL:
            raise RuntimeError(
                f"the web process exited with {web.returncode}, not killed:\n"
                + web.stderr.decode(errors="replace")[-2000:]
            )
        rig.count("web_kill", rounds=1, calls=n)
        log.info("web process killed after committing %d approvals", n)
        quota -= n
        r += 1
        time.sleep(pause)


def faulty_stream(
    rig: Rig,
    kind: str,
    quota: int,
    *,
    queue: str,
    concurrency: int,
    fault_for: Callable[[Made], dict[str, Any] | None],
) -> None:
    """Calls for a worker whose sinks misbehave (``timeout``, ``slow``), a batch at a time:
    each batch waits in its queue less than the re-send delay, so the fault really meets
    it (a call re-sent to the fleet would meet no fault)."""
    started = time.monotonic()
    while quota:
        _wait(lambda: (_tolerate_broker(lambda: chaos.queue_length(queue)) or 0) == 0, 60, 0.25)
        n = min(concurrency, quota)
        made = rig.make(kind, n)
        rig.upstream_faults(made, fault_for)
        rig.send(made, queue=queue)
        rig.count(kind, rounds=1)
        quota -= n
    log.info("%s: done in %.1f s", kind, time.monotonic() - started)


def start(rig: Rig, name: str, work: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
    def body() -> None:
        try:
            work(rig, *args, **kwargs)
        except BaseException as exc:
            traceback.print_exc()
            rig.errors.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return thread


# --- Keeping the long-lived workers running ---------------------------------------------


class Kept:
    """A long-lived worker (the fleet, the ``timeout`` and ``slow`` workers) that the soak
    restarts as a process supervisor would: when it exits, or when it stopped consuming
    (its queue held messages while its log stayed still for ``STALL_SECONDS``). A Celery
    worker's consumer can wedge when the broker restarts under it (seen here with Redis,
    with a task's hard time limit firing during the reconnection; the kombu/celery issues
    about consumers that stop after a Redis reconnection are many)."""

    STALL_SECONDS = 30

    def __init__(self, name: str, queue: str, concurrency: int, env: dict[str, str], logs: Path):
        self.name, self.queue, self.concurrency, self.env, self.logs = (
            name, queue, concurrency, env, logs,
        )  # fmt: skip
        self.restarts: Counter[str] = Counter()
        self._start()

    def _start(self) -> None:
        self.context = running_worker(
            concurrency=self.concurrency, tmp_path=self.logs, env=self.env
        )
        self.worker = self.context.__enter__()
        self.log_size = 0
        self.still_since = time.monotonic()
        self.work_waiting = False

    def check(self) -> None:
        now = time.monotonic()
        size = self.worker.log_path.stat().st_size
        if size != self.log_size:
            self.log_size, self.still_since, self.work_waiting = size, now, False
        self.work_waiting |= bool(_tolerate_broker(lambda: chaos.queue_length(self.queue)))
        if self.worker.proc.poll() is not None:
            self.restart("exited")
        elif self.work_waiting and now - self.still_since > self.STALL_SECONDS:
            self.restart("stopped consuming")

    def restart(self, reason: str) -> None:
        log.warning("%s worker %s: restarting it", self.name, reason)
        self.worker.signal_group(signal.SIGKILL)
        self.stop()
        self.restarts[reason] += 1
        self._start()

    def stop(self) -> None:
        self.context.__exit__(None, None, None)


def supervise(kept: list[Kept], stop: threading.Event) -> None:
    while not stop.wait(3):
        for worker in kept:
            try:
                worker.check()
            except Exception:
                log.exception("supervising the %s worker", worker.name)
