"""Executor throughput and approve-to-done latency, against two bare Celery baselines.

    flock /tmp/countersign-bench.lock python bench/bench_executor.py [--rounds 3]

Needs DATABASE_URL (PostgreSQL; the benchmark creates and drops its own database next to
it, named ``<name>_bench``) and REDIS_URL. Two `celery worker` processes (concurrency 1
each) serve every task from one queue on the same broker, in the same run:

* throughput, in each of ``--rounds`` rounds: N no-op tasks sent at once; N same-effect
  tasks sent at once (the sandbox write an executed send_email call makes, in its own
  transaction, with no claim, fence or audit: ``bench/_executor_baselines.py``); N approved
  send_email calls sent at once (every other round in the reverse order). Tasks done per
  second, from the first send to the last done; the executor's ratio to each baseline
  within the round, and the median of each figure over the rounds; and where each
  phase's CPU went, in milliseconds per task, by kind of process (the workers, PostgreSQL,
  Redis, this driver: ``bench/_cpu.py``), so that a ratio comes with its reason;
* latency: calls approved through the decision service at a steady pace (the real path:
  commit, then send), from the approval to the stored result, versus no-op tasks sent at
  the same pace, from the send to the run: p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from _cpu import CpuTally
from _cpu import line as cpu_line
from _scratch import drop_database, scratch_database

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def start_workers(
    count: int, queue: str, log_dir: Path, concurrency: int = 1
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for n in range(count):
        log = (log_dir / f"worker-{n}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker",
                 "--concurrency", str(concurrency), "--loglevel", "WARNING", "--queues", queue,
                 "--hostname", f"bench{n}-{uuid.uuid4().hex[:6]}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "--include", "bench._executor_baselines"],
                cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip
    return procs


def wait_ready(procs: list[subprocess.Popen[bytes]], queue: str) -> None:
    """Ready when a no-op task sent now has run (every worker is then consuming)."""
    import redis

    from bench._executor_baselines import noop

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = f"bench:ready:{uuid.uuid4().hex}"
    deadline = time.monotonic() + 60
    for _ in range(len(procs) * 4):
        noop.apply_async((key, time.time()), queue=queue)
    while client.llen(key) < len(procs) * 4:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("the benchmark's workers did not start")
        time.sleep(0.1)
    client.delete(key)


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# How often the driver looks whether a run is done. Every figure comes from the tasks' own
# timestamps (the calls' finished_at, the baselines' Redis entries), so a rare look changes
# no figure; it keeps the driver's own work off the two cores while they are measured (a
# look at 600 calls' statuses costs ~3 ms of CPU in the driver and PostgreSQL, ten times a
# second ate into the executor's run; the baselines' look is one Redis LLEN).
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Phase:
    """A throughput run: tasks done per second, and the CPU they took (ms per task by kind
    of process, ``_cpu.CpuTally``; empty in the warm-up, which nobody reads)."""

    rate: float
    cpu: dict[str, float]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- The two workloads --------------------------------------------------------------------


class World:
    def __init__(self) -> None:
        from django.contrib.auth.models import User

        from sandbox.demo import seed_sandbox
        from tools_registry import services as registry_services
        from tools_registry.models import Agent, Tool

        registry_services.sync_tools()
        seed_sandbox()
        self.owner = User.objects.create_user("bench-owner")
        self.reviewer = User.objects.create_user("bench-reviewer")
        self.tool = Tool.objects.get(name="send_email")
        registry_services.grant_review(tool=self.tool, user=self.reviewer)
        self.agent = Agent.objects.create(name="bench-agent", owner=self.owner)
        self.agent.allowed_tools.add(self.tool)

    def pending(self, n: int) -> list[uuid.UUID]:
        from approvals.services.calls import create_call

        return [
            create_call(
                agent=self.agent,
                tool=self.tool,
                arguments={"to": f"c{i}@example.com", "subject": "Hello", "body": "Hi."},
                session_id="bench",
                request_key=uuid.uuid4().hex,
            ).pk
            for i in range(n)
        ]

    def approve(self, call_id: uuid.UUID) -> None:
        from approvals.services.decisions import decide

        decide(call_id=call_id, reviewer=self.reviewer, verdict="approve")


def executor_throughput(world: World, n: int, queue: str, tally: CpuTally | None = None) -> Phase:
    from django.db.models import Max

    from approvals.execution import send
    from approvals.execution.tasks import execute_call
    from approvals.models import Status, ToolCall
    from config.celery import app

    ids = world.pending(n)
    held = send.send_execution
    send.send_execution = lambda call_id: None  # approve now, send below, all at once
    try:
        for call_id in ids:
            world.approve(call_id)
    finally:
        send.send_execution = held
    limits = {call_id: send.time_limits(call_id) for call_id in ids}
    before = tally.snapshot() if tally else {}
    started = time.time()
    with app.producer_or_acquire() as producer:
        for call_id in ids:
            execute_call.apply_async(
                (str(call_id),), queue=queue, producer=producer, **limits[call_id]
            )
    calls = ToolCall.objects.filter(pk__in=ids)
    while calls.filter(status=Status.SUCCEEDED).count() < n:
        time.sleep(POLL_SECONDS)
    cpu = tally.per_task(before, tally.snapshot(), n) if tally else {}
    finished = calls.aggregate(last=Max("finished_at"))["last"].timestamp()
    return Phase(n / (finished - started), cpu)


def noop_throughput(n: int, queue: str, tally: CpuTally | None = None) -> Phase:
    import redis

    from bench._executor_baselines import noop
    from config.celery import app

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = f"bench:noop:{uuid.uuid4().hex}"
    before = tally.snapshot() if tally else {}
    started = time.time()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async((key, time.time()), queue=queue, producer=producer)
    while client.llen(key) < n:
        time.sleep(POLL_SECONDS)
    cpu = tally.per_task(before, tally.snapshot(), n) if tally else {}
    finished = max(float(item.split()[1]) for item in client.lrange(key, 0, -1))
    client.delete(key)
    return Phase(n / (finished - started), cpu)


def same_effect_throughput(n: int, queue: str, tally: CpuTally | None = None) -> Phase:
    """N tasks that each make the sandbox write of one executed send_email call."""
    import redis

    from bench._executor_baselines import same_effect
    from config.celery import app

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = f"bench:effect:{uuid.uuid4().hex}"
    tasks = [
        (str(uuid.uuid4()), {"to": f"c{i}@example.com", "subject": "Hello", "body": "Hi."})
        for i in range(n)
    ]
    before = tally.snapshot() if tally else {}
    started = time.time()
    with app.producer_or_acquire() as producer:
        for call_id, arguments in tasks:
            same_effect.apply_async(
                (key, time.time(), call_id, arguments), queue=queue, producer=producer
            )
    while client.llen(key) < n:
        time.sleep(POLL_SECONDS)
    cpu = tally.per_task(before, tally.snapshot(), n) if tally else {}
    finished = max(float(item.split()[1]) for item in client.lrange(key, 0, -1))
    client.delete(key)
    return Phase(n / (finished - started), cpu)


def executor_latency(world: World, n: int, rate: float) -> list[float]:
    from approvals.models import Status, ToolCall

    ids = world.pending(n)
    for i, call_id in enumerate(ids):
        pace(i, rate)
        world.approve(call_id)  # commits, then sends the task: the real path
    calls = ToolCall.objects.filter(pk__in=ids)
    while calls.filter(status=Status.SUCCEEDED).count() < n:
        time.sleep(POLL_SECONDS)
    return [
        (finished - decided).total_seconds()
        for decided, finished in calls.values_list("decided_at", "finished_at")
    ]


def noop_latency(n: int, rate: float, queue: str) -> list[float]:
    import redis

    from bench._executor_baselines import noop

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = f"bench:noop:{uuid.uuid4().hex}"
    for i in range(n):
        pace(i, rate)
        noop.apply_async((key, time.time()), queue=queue)
    while client.llen(key) < n:
        time.sleep(POLL_SECONDS)
    pairs = [item.split() for item in client.lrange(key, 0, -1)]
    client.delete(key)
    return [float(done) - float(sent) for sent, done in pairs]


_pace_start = 0.0


def pace(i: int, rate: float) -> None:
    global _pace_start
    if i == 0:
        _pace_start = time.monotonic()
    delay = _pace_start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600, help="calls in each throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (medians)")
    parser.add_argument("--paced", type=int, default=200, help="calls in the latency run")
    parser.add_argument("--rate", type=float, default=25, help="approvals per second, paced")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="child processes per worker (1: each task's waits on PostgreSQL and Redis are "
        "the worker's; more: the machine's CPU is the limit, as in production)",
    )
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres") or not os.environ.get("REDIS_URL"):
        print("bench_executor needs DATABASE_URL (PostgreSQL) and REDIS_URL", file=sys.stderr)
        return 2
    bench_url = scratch_database(database_url, "_bench")
    queue = f"bench-executor-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        DATABASE_URL=bench_url,
        CELERY_QUEUE=queue,
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-executor",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("SANDBOX_FAULTS", None)
    os.environ.setdefault("SANDBOX_ENABLED", "1")  # the simulated tools live there
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    world = World()
    log_dir = Path(tempfile.mkdtemp(prefix="countersign-bench-"))
    procs = start_workers(args.workers, queue, log_dir, args.concurrency)
    rounds: list[dict[str, float]] = []
    cpu_rounds: list[dict[str, dict[str, float]]] = []
    try:
        wait_ready(procs, queue)
        # Warm up every path (imports, connections, the pool) before measuring.
        noop_throughput(50, queue)
        same_effect_throughput(20, queue)
        executor_throughput(world, 20, queue)

        print(
            f"executor, {args.workers} workers (concurrency {args.concurrency} each), "
            "same broker, same run"
        )
        print(
            f"  throughput, {args.calls} tasks each, per second from the first send to the last done"
        )
        tally = CpuTally(
            {"workers": [proc.pid for proc in procs]}, database=urlsplit(bench_url).path[1:]
        )
        runs = {
            "noop": lambda: noop_throughput(args.calls, queue, tally),
            "same_effect": lambda: same_effect_throughput(args.calls, queue, tally),
            "executor": lambda: executor_throughput(world, args.calls, queue, tally),
        }
        for n in range(1, args.rounds + 1):
            # Every other round runs them in reverse, so that a drift in the machine's load
            # over a round does not always favour the same side.
            order = list(runs) if n % 2 else list(reversed(runs))
            phases = {name: runs[name]() for name in order}
            figures = {name: phase.rate for name, phase in phases.items()}
            figures["vs_same_effect"] = figures["executor"] / figures["same_effect"]
            figures["vs_noop"] = figures["executor"] / figures["noop"]
            rounds.append(figures)
            cpu_rounds.append({name: phase.cpu for name, phase in phases.items()})
            print(f"  round {n}  " + _throughput_line(figures))
            for name in runs:
                print(f"    cpu ms per task, {name:<11} " + cpu_line(phases[name].cpu))
        noop_lat = noop_latency(args.paced, args.rate, queue)
        exec_lat = executor_latency(world, args.paced, args.rate)
    finally:
        stop_workers(procs)
        from django.db import connections

        connections.close_all()
        drop_database(bench_url)

    medians = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    print("  median   " + _throughput_line(medians) + f"   ({len(rounds)} rounds)")
    print(
        f"  executor / same-effect baseline: median {medians['vs_same_effect']:.2f} "
        f"(rounds {', '.join(f'{r["vs_same_effect"]:.2f}' for r in rounds)})"
    )
    print(
        f"  executor / no-op baseline:       median {medians['vs_noop']:.2f} "
        f"(rounds {', '.join(f'{r["vs_noop"]:.2f}' for r in rounds)})"
    )
    cpu = {
        name: {
            kind: round(statistics.median(r[name].get(kind, 0.0) for r in cpu_rounds), 2)
            for kind in cpu_rounds[0][name]
        }
        for name in cpu_rounds[0]
    }
    for name, figures in cpu.items():
        print(f"  cpu ms per task, {name:<11} median  " + cpu_line(figures))
    latency = {
        "executor_p50_ms": round(statistics.median(exec_lat) * 1000, 1),
        "executor_p99_ms": round(percentile(exec_lat, 0.99) * 1000, 1),
        "noop_p50_ms": round(statistics.median(noop_lat) * 1000, 1),
        "noop_p99_ms": round(percentile(noop_lat, 0.99) * 1000, 1),
    }
    print(
        f"  latency  executor p50 {latency['executor_p50_ms']:7.1f} ms  p99 {latency['executor_p99_ms']:7.1f} ms   "
        f"no-op p50 {latency['noop_p50_ms']:6.1f} ms  p99 {latency['noop_p99_ms']:6.1f} ms   "
        f"({args.paced} at {args.rate:g}/s)"
    )
    print(
        json.dumps(
            {
                "workers": args.workers,
                "calls": args.calls,
                "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
                "median": {k: round(v, 2) for k, v in medians.items()},
                "cpu_ms_per_task": cpu,
                "paced_per_s": args.rate,
                **latency,
            }
        )
    )
    return 0


def _throughput_line(figures: dict[str, float]) -> str:
    return (
        f"executor {figures['executor']:7.1f} calls/s   "
        f"same-effect {figures['same_effect']:7.1f} tasks/s   "
        f"no-op {figures['noop']:7.1f} tasks/s   "
        f"ratios {figures['vs_same_effect']:.2f} (same-effect)  {figures['vs_noop']:.2f} (no-op)"
    )


if __name__ == "__main__":
    sys.exit(main())
