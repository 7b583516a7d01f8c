"""Load benchmark of write-call submissions against a bare Django view, in one run.

Both endpoints are served by the same gunicorn (same workers, middleware, PostgreSQL,
Redis) and driven by the same load generator with the same concurrency:

* submit: ``POST /api/v1/tool-calls`` of a ``send_email`` call (a write): bearer auth,
  Idempotency-Key record, tool and schema checks, circuit breaker, session round, rate
  limits (per agent, a limit high enough never to refuse), the pending call and its audit
  event, the stored response; answers 202.
* bare: a view that parses the same JSON body and inserts it as one row; answers 201.

Prints requests/s, p50 and p99 latency for each and the ratio submit/bare.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python bench/bench_submit.py

The run creates its own database beside DATABASE_URL's (``<name>_bench_submit``) and drops
it at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

EMAIL = {
    "tool": "send_email",
    "arguments": {
        "to": "ada@example.com",
        "subject": "Your refund",
        "body": "Your refund of 42.00 EUR is on its way and should arrive within five days.",
    },
    "reasoning": "The customer asked for a written confirmation of the refund.",
}


def prepare() -> str:
    """Migrate, register the tools, and create the benchmark's agent; returns its token."""
    os.environ.setdefault("SANDBOX_ENABLED", "1")  # the simulated tools live there
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from gateway import breaker
    from tools_registry import services
    from tools_registry.models import Agent, Tool

    call_command("migrate", verbosity=0)
    services.sync_tools()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS bench_bare_row "
            "(id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, body jsonb NOT NULL)"
        )
    owner, _ = User.objects.get_or_create(username="bench-owner")
    agent, _ = Agent.objects.get_or_create(name="bench-agent", defaults={"owner": owner})
    agent.max_rounds_per_session = 10**9
    agent.enabled = True
    agent.save()
    tool = Tool.objects.get(name="send_email")
    # Limits stay on (each submission runs the Redis script) but never refuse here.
    Tool.objects.filter(pk=tool.pk).update(
        enabled=True, rate_limit_per_agent="10000000/hour", rate_limit_per_user=""
    )
    breaker.reset(tool.name)
    agent.allowed_tools.add(tool)
    _, token = services.issue_token(agent=agent, label="bench")
    return token


def count_rows() -> tuple[int, int]:
    from django.db import connection

    from approvals.models import ToolCall

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM bench_bare_row")
        (bare,) = cursor.fetchone()
    return bare, ToolCall.objects.filter(agent__name="bench-agent").count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "submit_site",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)]),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-secret-key",
        "DB_POOL_MAX_SIZE": str(max(threads, 4)),
        "LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads),
        "--keep-alive", "30",
        "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None:
            raise RuntimeError("gunicorn exited")
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("gunicorn did not become healthy")


@dataclass
class Result:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def line(self) -> str:
        failed = sum(self.errors.values())
        return (
            f"{self.name:<7} {self.rps:8.1f} req/s   p50 {self.percentile(50):6.1f} ms   "
            f"p99 {self.percentile(99):6.1f} ms   ({len(self.latencies)} ok, {failed} failed)"
        )


Request = Callable[[int], tuple[str, bytes, dict[str, str]]]


def drive(
    name: str,
    port: int,
    request: Request,
    expect: int,
    concurrency: int,
    seconds: float,
    warmup: float,
) -> Result:
    """``concurrency`` keep-alive clients sending back to back for warmup + seconds."""
    result = Result(name=name, seconds=seconds)
    lock = threading.Lock()
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies: list[float] = []
        errors: dict[int, int] = {}
        while (now := time.monotonic()) < stop_at:
            path, body, headers = request(index)
            began = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = 0
            elapsed = time.perf_counter() - began
            if now >= measure_from:
                if status == expect:
                    latencies.append(elapsed)
                else:
                    errors[status] = errors.get(status, 0) + 1
        conn.close()
        with lock:
            result.latencies.extend(latencies)
            for status, count in errors.items():
                result.errors[status] = result.errors.get(status, 0) + count

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        sys.exit(
            "Set DATABASE_URL (PostgreSQL) and REDIS_URL: this benchmark runs in services mode."
        )
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    from _scratch import drop_database, scratch_database

    database_url = os.environ["DATABASE_URL"]
    os.environ["DATABASE_URL"] = bench_url = scratch_database(database_url, "_bench_submit")
    try:
        run(args)
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(bench_url)


def run(args: argparse.Namespace) -> None:
    token = prepare()
    payload = json.dumps(EMAIL).encode()

    def submit(index: int) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps({**EMAIL, "session_id": f"bench-{index}"}).encode()
        return (
            "/api/v1/tool-calls",
            body,
            {
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": str(uuid.uuid4()),
                "Content-Type": "application/json",
            },
        )

    def bare(index: int) -> tuple[str, bytes, dict[str, str]]:
        return "/bench/bare-insert", payload, {"Content-Type": "application/json"}

    port = free_port()
    server = start_server(port, args.workers, args.threads)
    results: dict[str, list[Result]] = {"bare": [], "submit": []}
    try:
        rows_before = count_rows()
        for _ in range(args.rounds):
            for name, request, expect in (("bare", bare, 201), ("submit", submit, 202)):
                result = drive(
                    name, port, request, expect, args.concurrency, args.seconds, args.warmup
                )
                print(result.line(), flush=True)
                results[name].append(result)
        rows_after = count_rows()
    finally:
        server.terminate()
        server.wait(10)

    merged = {
        name: Result(
            name=name,
            seconds=sum(r.seconds for r in runs),
            latencies=[x for r in runs for x in r.latencies],
            errors={k: sum(r.errors.get(k, 0) for r in runs) for r in runs for k in r.errors},
        )
        for name, runs in results.items()
    }
    print()
    print(
        f"gunicorn gthread: {args.workers} workers x {args.threads} threads; "
        f"{args.concurrency} keep-alive clients; {args.rounds} x {args.seconds:.0f} s per endpoint "
        f"after {args.warmup:.0f} s warm-up"
    )
    for result in merged.values():
        print(result.line())
    ratio = merged["submit"].rps / merged["bare"].rps
    print(
        f"ratio submit/bare: {ratio:.2f} (rounds: "
        + ", ".join(
            f"{s.rps / b.rps:.2f}" for b, s in zip(results["bare"], results["submit"], strict=True)
        )
        + f"; median {statistics.median(s.rps / b.rps for b, s in zip(results['bare'], results['submit'], strict=True)):.2f})"
    )
    p99 = merged["submit"].percentile(99) / merged["bare"].percentile(99)
    print(f"p99 submit/bare: {p99:.2f} (aim: under 3)")
    created_bare = rows_after[0] - rows_before[0]
    created_calls = rows_after[1] - rows_before[1]
    print(f"rows created: bare {created_bare}, tool calls {created_calls}")


if __name__ == "__main__":
    main()
