"""The soak: thousands of approved write calls through real Celery workers while a fault
driver keeps injecting every failure the executor claims to survive; then a count, from
the sinks' own records, of effects per call. Exactly once or a non-zero exit.

    make soak                          # 10,000 calls (under 30 minutes on 2 cores)
    make soak SOAK_ARGS="--calls 500"  # a quick one

It needs DATABASE_URL (PostgreSQL: the soak creates and drops its own database beside that
one, named ``<name>_soak``, or that one itself if its name already ends in ``_soak``) and
``redis-server`` on the PATH: the soak runs a Redis of its own (``--redis-port``, default
6390, no persistence), because it kills and restarts it; the shared one is never touched.

What runs, each in processes of its own, as in production:

* the sinks: the sandbox's mail system (in the workers) and payments API (gunicorn) behind
  the code tools ``send_email`` and ``issue_refund``; an HTTP API imported from its OpenAPI
  document (``orders__create_order``, honours Idempotency-Key) and an MCP server imported
  twice: ``notes__add_entry`` honours the key in ``_meta`` (``--rerunnable``),
  ``journal__write_note`` does not (every request is a note, so it is never re-run by
  itself and an unknown outcome goes to a person). The upstreams are the upstream tests'
  servers (``tests/support/upstreams``), which log every effect with its key;
* two fleet workers on the main queue; a ``timeout`` and a ``slow`` worker whose sinks
  misbehave; short-lived victim workers; ``celery beat``, which sends the sweeps (re-sends,
  lease expiry, reconciliation) and the audit sealer to the fleet every few seconds;
* two producer processes (the steady load, ``bench/_soak_calls.py``): calls approved by the
  tools' soak rule as they arrive (four in five) or by a reviewer through the decision
  service (one in five), sent on commit; one in six of them is delivered 2-4 times;
* the fault driver's threads (``bench/_soak_faults.py``): kill -9 of workers before,
  during and after the effect; SIGSTOP past the lease, then SIGCONT; Redis killed and
  restarted empty with tasks queued; web processes killed between commit and send;
  timeouts after the effect (handlers and upstreams); slow downstreams.

Timings are compressed so faults settle in seconds, not minutes (every soak tool times out
after 2 s; lease grace 5 s, re-send after 8 s; Celery's soft limit 2 s past the timeout, the
hard limit 2 s after that); beat's schedule is production's. The soak restarts a fleet,
``timeout`` or ``slow`` worker that exits or stops consuming, as a process supervisor
would, and says how often it did.

When every fault has been acted out, the soak waits for every call to settle (terminal,
or escalated to a person), stops the workers, plays the person for the escalated calls
(marks each as the sink's records say, through the attention service) and counts
(``bench/_soak_tally.py``): per fault kind, the calls, effects, duplicates, lost calls,
unknown outcomes resolved by reconciliation or escalated. The last line is ``soak: N calls, N effects, 0 duplicates, 0 lost``, or the run
fails with a line saying what broke. Logs of every process stay in a temporary directory
(printed at the start); so does the database when the run fails (``--keep`` keeps it
anyway). ``--self-test`` breaks exactly-once on purpose before the count (a second effect
for one call, a call approved and never sent) to show that the count catches both.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# The soak's share of each fault kind; the rest of the calls meet no fault ("none").
SHARES = {
    "duplicate": 0.10,
    "web_kill": 0.08,
    "redis_restart": 0.08,
    "kill_before": 0.035,
    "kill_during": 0.035,
    "kill_after": 0.035,
    "sigstop": 0.035,
    "timeout_after": 0.05,
    "slow": 0.05,
}
TOOL_TIMEOUT = 2  # seconds, every soak tool's
# Compressed from production's 30, 60, 5 and 10 s, so that faults settle in seconds. Celery's
# limits keep 2 s of grace each: with 1 s, on a loaded machine, billiard's limit signals
# often arrive after the task has returned and kill the idle pool process.
SETTINGS = {
    "EXECUTOR_LEASE_GRACE_SECONDS": "5",
    "EXECUTOR_RESEND_AFTER_SECONDS": "8",
    "EXECUTOR_SOFT_LIMIT_GRACE_SECONDS": "2",
    "EXECUTOR_HARD_LIMIT_GRACE_SECONDS": "2",
}
FLEET_CONCURRENCY = 4  # two fleet workers
TIMEOUT_CONCURRENCY, SLOW_CONCURRENCY = 6, 4
WEB_KILL_BATCH, REDIS_BATCH = 40, 80


def plan(calls: int) -> dict[str, int]:
    quotas = {kind: round(calls * share) for kind, share in SHARES.items()}
    quotas["none"] = calls - sum(quotas.values())
    return quotas


def soak_database(url: str) -> str:
    """A fresh database named after DATABASE_URL's, with ``_soak`` appended (unless its
    name already ends so)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    name = name if name.endswith("_soak") else f"{name}_soak"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


def say(text: str) -> None:
    print(text, flush=True)


# --- The processes ----------------------------------------------------------------------


@contextmanager
def running_beat(tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``celery beat`` with production's schedule (config/settings.py)."""
    import signal

    from tests.support.workers import worker_env

    with (tmp / "beat.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
             "--schedule", str(tmp / "beat-schedule")],
            cwd=ROOT, env=worker_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def set_up_world(http_url: str, mcp_url: str) -> Any:
    """The tests' cast (tests.conftest.build_world), the upstreams imported as an admin
    would, and every soak tool's policy: a 2 s timeout and the rule that approves the soak's
    own calls (``bench._soak_calls.AUTO_RULE``)."""
    from io import StringIO

    from django.core.management import call_command

    from bench._soak_calls import AGENT, AUTO_RULE, SINKS, SoakWorld
    from tests.conftest import build_world
    from tests.support.calls import ensure_refundable
    from tests.support.upstreams import UPSTREAM_TOKEN
    from tools_registry import services as registry_services
    from tools_registry.models import Tool

    world = build_world()
    ensure_refundable()
    for name, *source in (
        ("orders", "--openapi", f"{http_url}/openapi.json",
         "--header", f"Authorization: Bearer {UPSTREAM_TOKEN}",
         "--idempotency-header", "Idempotency-Key"),
        ("notes", "--mcp", f"{mcp_url}/mcp", "--rerunnable"),
        ("journal", "--mcp", f"{mcp_url}/mcp"),
    ):  # fmt: skip
        call_command(
            "add_upstream", name, *source, "--enable", "--allow", AGENT,
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
        for tool in Tool.objects.filter(upstream__name=name):
            registry_services.grant_review(tool=tool, user=world.bob)
    for spec in SINKS.values():
        registry_services.update_policy(
            tool=Tool.objects.get(name=spec.tool),
            changes={"timeout_seconds": TOOL_TIMEOUT, "rules": [AUTO_RULE]},
            changed_by=None,
        )
    return SoakWorld.load()


def start_producers(count: int, quotas: dict[str, int], logs: Path) -> list[subprocess.Popen]:
    procs = []
    for p in range(count):
        share = {k: quotas[k] // count + (1 if p < quotas[k] % count else 0) for k in quotas}
        with (logs / f"producer-{p}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--role", "produce",
                     "--origin", f"p{p}", "--none", str(share["none"]),
                     "--duplicate", str(share["duplicate"])],
                    cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    return procs


def unsettled(world: Any) -> int:
    """Soak calls neither terminal nor escalated to a person."""
    from approvals.models import Status, ToolCall

    return (
        ToolCall.objects.filter(agent=world.agent, session_id__startswith="soak-")
        .exclude(status__in=[Status.SUCCEEDED, Status.FAILED])
        .exclude(status=Status.UNKNOWN, needs_attention=True)
        .count()
    )


def progress(rig: Any, world: Any, stop: threading.Event, started: float) -> None:
    from django.conf import settings
    from django.db import connections

    from approvals.models import ToolCall
    from tests.support import chaos

    while not stop.wait(30):
        try:
            made = ToolCall.objects.filter(agent=world.agent).count()
            queued = chaos.queue_length(settings.CELERY_TASK_DEFAULT_QUEUE)
            say(
                f"  [{time.monotonic() - started:6.0f} s] {made} calls made, "
                f"{unsettled(world)} not settled, {queued} tasks queued, "
                f"rounds {dict((k, v['rounds']) for k, v in rig.counts.items() if v['rounds'])}"
            )
        except Exception as exc:  # Redis restarting: the next report will do
            say(f"  (progress: {type(exc).__name__})")
    connections.close_all()


# --- The run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="countersign-soak-"))
    database = soak_database(os.environ["DATABASE_URL"])
    os.environ.update(
        DATABASE_URL=database,
        REDIS_URL=f"redis://127.0.0.1:{args.redis_port}/0",
        SECRET_KEY=os.environ.get("SECRET_KEY") or "countersign-soak-only",
        SANDBOX_ENABLED="1",
        AUDIT_ANCHOR_PATH=str(tmp / "anchor.jsonl"),
        COUNTERSIGN_VAR_DIR=str(tmp / "var"),
        DB_POOL_MAX_SIZE="12",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **SETTINGS,
    )
    quotas = plan(args.calls)
    say(f"soak: {args.calls} calls, database {urlsplit(database).path[1:]}, logs in {tmp}")
    say("  plan: " + ", ".join(f"{k} {v}" for k, v in quotas.items()))

    import random

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from bench import _soak_faults as faults
    from bench import _soak_tally as tally
    from sandbox.models import SandboxFault
    from tests.support import chaos
    from tests.support.upstreams import running_upstream

    call_command("migrate", verbosity=0)
    # The driver's own log (rounds, restarts, the product's warnings) goes beside the others.
    import logging

    handler = logging.FileHandler(tmp / "driver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.root.handlers = [handler]
    logging.getLogger("soak").setLevel(logging.INFO)
    failed = True
    with ExitStack() as services:
        restart_redis = services.enter_context(chaos.redis_server(args.redis_port, tmp))
        server = services.enter_context(chaos.payments_server(tmp))
        http = services.enter_context(running_upstream("http_api", tmp))
        mcp = services.enter_context(running_upstream("mcp_server", tmp))
        world = set_up_world(http.url, mcp.url)
        main_queue = settings.CELERY_TASK_DEFAULT_QUEUE
        rig = faults.Rig(
            world=world,
            server=server,
            http=http,
            mcp=mcp,
            logs=tmp,
            main_queue=main_queue,
            worker_env={k: v for k, v in SETTINGS.items() if k.endswith("_GRACE_SECONDS")},
            restart_redis=restart_redis,
            timeout=TOOL_TIMEOUT,
            rng=random.Random(args.seed),
        )
        # The timeout worker's sinks answer 5 s after the effect (past the tools' 2 s and
        # Celery's soft limit at 4 s); the slow worker's wait up to 1.8 s before it and
        # 1.8 s after it.
        late = TOOL_TIMEOUT + 3
        chaos.fault(SandboxFault.Point.AFTER_EFFECT, tag="timeout", delay_seconds=late)
        for point in (SandboxFault.Point.BEFORE_EFFECT, SandboxFault.Point.AFTER_EFFECT):
            chaos.fault(point, tag="slow", delay_seconds=0.9 * TOOL_TIMEOUT, random_delay=True)

        with ExitStack() as workers:
            kept = []
            for name, queue, concurrency in (
                ("fleet", main_queue, FLEET_CONCURRENCY),
                ("fleet", main_queue, FLEET_CONCURRENCY),
                ("timeout", f"{main_queue}-timeout", TIMEOUT_CONCURRENCY),
                ("slow", f"{main_queue}-slow", SLOW_CONCURRENCY),
            ):
                env = chaos.chaos_worker_env(server, tag=name, CELERY_QUEUE=queue, **rig.worker_env)
                kept.append(faults.Kept(name, queue, concurrency, env, tmp))
                workers.callback(kept[-1].stop)
            stop = threading.Event()
            workers.callback(stop.set)
            supervisor = threading.Thread(target=faults.supervise, args=(kept, stop), daemon=True)
            supervisor.start()
            workers.enter_context(running_beat(tmp))
            # Every send of the driver's own calls is held back on commit; it routes them.
            workers.enter_context(chaos.approvals_not_sent())
            setup_done = time.monotonic()
            say(f"  set up in {setup_done - started:.0f} s; load and faults start")

            kills = {k: quotas[k] for k in faults.KILL_POINTS}
            halves = [{k: (n + 1) // 2 for k, n in kills.items()}]
            halves.append({k: kills[k] - halves[0][k] for k in kills})
            upstream_timeout = {"after": late}

            def slow(_: object) -> dict[str, float]:
                return {
                    "before": rig.rng.uniform(0, 0.9 * TOOL_TIMEOUT),
                    "after": rig.rng.uniform(0, 0.9 * TOOL_TIMEOUT),
                }

            threads = [
                faults.start(rig, "kills-1", faults.kill_rounds, halves[0]),
                faults.start(rig, "kills-2", faults.kill_rounds, halves[1]),
                faults.start(rig, "sigstop", faults.sigstop_rounds, quotas["sigstop"]),
                faults.start(
                    rig, "redis", faults.redis_rounds, quotas["redis_restart"],
                    batch=REDIS_BATCH, pause=15,
                ),
                faults.start(
                    rig, "web-kill", faults.web_kill_rounds, quotas["web_kill"],
                    batch=WEB_KILL_BATCH, pause=5,
                ),
                faults.start(
                    rig, "timeouts", faults.faulty_stream, "timeout_after",
                    quotas["timeout_after"], queue=f"{main_queue}-timeout",
                    concurrency=TIMEOUT_CONCURRENCY, fault_for=lambda m: upstream_timeout,
                ),
                faults.start(
                    rig, "slow", faults.faulty_stream, "slow", quotas["slow"],
                    queue=f"{main_queue}-slow", concurrency=SLOW_CONCURRENCY, fault_for=slow,
                ),
            ]  # fmt: skip
            producers = start_producers(2, quotas, tmp)
            reporter = threading.Thread(
                target=progress, args=(rig, world, stop, started), daemon=True
            )
            reporter.start()
            for p, proc in enumerate(producers):
                proc.wait()
                if proc.returncode:
                    rig.errors.append(f"a producer exited with {proc.returncode} (see {tmp})")
                if done := re.search(
                    r"(\d+) extra copies sent", (tmp / f"producer-{p}.log").read_text()
                ):
                    rig.count("duplicate", extra_copies=int(done[1]))
            for thread in threads:
                thread.join()
            load_done = time.monotonic()
            say(f"  load and faults done in {load_done - setup_done:.0f} s; draining")

            deadline = time.monotonic() + args.drain_seconds
            while (left := unsettled(world)) and time.monotonic() < deadline:
                time.sleep(2)
            stop.set()
            supervisor.join()
            for worker in kept:
                for reason, n in worker.restarts.items():
                    rig.count("workers", **{f"{worker.name}_{reason.replace(' ', '_')}": n})
            drained = time.monotonic()
            say(f"  drained in {drained - load_done:.0f} s ({left} calls not settled)")
        # Every worker and beat have stopped; a request a sink still held has been answered.
        time.sleep(3)
        if args.self_test:
            self_test(rig, mcp.url)
        effects, requests = tally.sink_effects(http, mcp)
        marked = tally.resolve_escalated(world, effects)
        in_flight = {k: v["in_flight"] for k, v in rig.counts.items()}
        result = tally.count(world, effects, requests, in_flight, tmp / "anchor.jsonl")
        result.person_marked = marked
        failed = report(result, rig, started, setup_done, load_done, drained)
    if failed or args.keep:
        say(f"  database kept: {database}; logs in {tmp}")
    else:
        drop_database(database)
    return 1 if failed else 0


def self_test(rig: Any, mcp_url: str) -> None:
    """Break exactly-once on purpose, once the workers have stopped, to show that the count
    sees it: a second note for a journal call that took effect (another request, under
    another key, as a product that lost track of a call would send), and one more call,
    approved with its send held back and nobody left to re-send it (lost)."""
    from approvals.models import Status, ToolCall
    from tests.support import chaos
    from tools_registry.upstreams import mcp

    done = ToolCall.objects.filter(
        tool__name="journal__write_note", status=Status.SUCCEEDED
    ).first()
    assert done is not None, "no journal call succeeded"
    text = done.arguments["text"]
    mcp.call(
        url=f"{mcp_url}/mcp", headers=[], tool="write_note", arguments={"text": text},
        key="soak-self-test", timeout=10,
    )  # fmt: skip
    with chaos.approvals_not_sent():
        rig.make("none", 1, ("email",))
    say(f"  self-test: a second effect for {done.pk} and one call approved but never sent")


def report(
    result: Any, rig: Any, started: float, setup: float, load: float, drained: float
) -> bool:
    from bench._soak_tally import KINDS, SINKS, table

    total = result.total
    say("")
    for line in table("fault kind", result.by_kind, KINDS, total):
        say(line)
    say("")
    for line in table("sink", result.by_sink, tuple(SINKS), total):
        say(line)
    say("")
    counts = {k: dict(v) for k, v in sorted(rig.counts.items())}
    restarts = counts.pop("workers", {})
    say("fault rounds: " + "; ".join(
        f"{k} " + ", ".join(f"{n} {what}" for what, n in sorted(v.items()) if what != "calls")
        for k, v in counts.items()
    ))  # fmt: skip
    say(
        "workers restarted by the soak's supervisor: "
        + (", ".join(f"{n} {what.replace('_', ' ')}" for what, n in restarts.items()) or "none")
    )
    marked: Counter[str] = result.person_marked
    say(
        f"escalated calls marked by the person on call: {marked.get('succeeded', 0)} "
        f"succeeded, {marked.get('failed', 0)} failed (from the sinks' records)"
    )
    say("audit chain: " + ("verified" if result.chain_ok else f"BROKEN: {result.chain_reason}"))
    end = time.monotonic()
    say(
        f"elapsed: {end - started:.0f} s (set-up {setup - started:.0f} s, load and faults "
        f"{load - setup:.0f} s, drain {drained - load:.0f} s, count {end - drained:.0f} s)"
    )
    if stalled := counts.get("sigstop", {}).get("not_taken_over", 0):
        say(
            f"WARNING: in {stalled} SIGSTOP round(s) the sweeps had not taken the paused "
            "worker's calls over a minute after their leases ran out"
        )
    problems: Counter[str] = result.problems
    errors: list[str] = rig.errors
    for what, n in problems.items():
        say(f"PROBLEM: {n} {what}, e.g. {result.examples[what]}")
    for error in errors:
        say(f"PROBLEM: the fault driver failed: {error}")
    line = (
        f"soak: {total.calls} calls, {total.effects} effects, "
        f"{total.duplicates} duplicates, {total.lost} lost"
    )
    if problems or errors:
        say(f"soak FAILED: {', '.join(f'{n} {w}' for w, n in problems.items()) or 'fault driver'}")
        say(line)
        return True
    say(line)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="approved calls (10000)")
    parser.add_argument("--redis-port", type=int, default=6390, help="the soak's own Redis")
    parser.add_argument("--seed", type=int, default=17, help="seed of the random delays")
    parser.add_argument(
        "--drain-seconds", type=float, default=600, help="longest wait for calls to settle"
    )
    parser.add_argument("--keep", action="store_true", help="keep the soak's database")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="before counting, add a second effect to one call and an approved call that is "
        "never sent: the run must then fail, naming both",
    )
    # The roles the soak runs as processes of its own (bench/_soak_calls.py).
    parser.add_argument("--role", choices=["produce", "web-kill"], help=argparse.SUPPRESS)
    parser.add_argument("--origin", default="", help=argparse.SUPPRESS)
    parser.add_argument("--none", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--duplicate", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        import django

        django.setup()
        from bench import _soak_calls

        if args.role == "produce":
            _soak_calls.produce(
                origin=args.origin, none=args.none, duplicate=args.duplicate, queue_limit=120
            )
        else:
            _soak_calls.web_kill(origin=args.origin, count=args.count)
        return 0
    if args.calls < 200:
        parser.error("--calls: at least 200, so that every fault kind gets calls")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
