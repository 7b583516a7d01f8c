"""Load benchmark of the agent's two doors (REST and MCP), against bare Django views, in one run.

Every endpoint is served by the same server processes (same workers, middleware,
PostgreSQL, Redis) and driven by the same load generator with the same concurrency:

* write: a ``send_email`` call (a write: bearer auth, Idempotency-Key record, tool and
  schema checks, policy screening, circuit breaker, session round, rate limits (a limit high
  enough never to refuse), the pending call and its audit event, the stored response),
  against a bare view that parses the same JSON body and inserts it as one row;
* read: a ``get_customer`` call, which runs at once (the same checks, the call's claim,
  the handler, the result and both audit events), against a bare view that parses the
  body and calls the same handler in-process.

REST writes are also measured, in the same rounds, against a bare view that keeps the same
rows as a submission with none of its checks (``submit_urls.bare_durable``): the token, the
key's record, the session's round, the call, its audit event and the stored answer.

Under gunicorn (``config.wsgi``, gthread) the calls go through ``POST /api/v1/tool-calls``;
under uvicorn (``config.asgi``, the deployment that serves ``/mcp``) through MCP's
``tools/call`` (a write as a task, answered at once, each a different e-mail: without a
key, MCP makes the same call in the same session one call; a read answered with its result),
each ratio against the bare views on the same server.

Prints requests/s, p50 and p99 latency for each, each ratio per round and its median, the
p99 ratios, and where the CPU of each measured window went, in milliseconds per request, by
kind of process (the server, PostgreSQL, Redis, this load generator: ``bench/_cpu.py``).

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
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _cpu import CpuTally  # noqa: E402 - bench/ is on the path from here
from _cpu import line as cpu_line  # noqa: E402

READ = {
    "tool": "get_customer",
    "arguments": {"customer_id": "cus_bench"},
    "reasoning": "The customer asked which plan they are on.",
}

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
    from sandbox.models import Customer

    Customer.objects.get_or_create(
        customer_id="cus_bench",
        defaults={"name": "Ada Bench", "email": "ada@example.com", "phone": "+44 20 7946 0000"},
    )
    for tool in Tool.objects.filter(name__in=["send_email", "get_customer"]):
        # Limits stay on (each call runs the Redis script) but never refuse here.
        Tool.objects.filter(pk=tool.pk).update(
            enabled=True, rate_limit_per_agent="10000000/hour", rate_limit_per_user=""
        )
        breaker.reset(tool.name)
        agent.allowed_tools.add(tool)
    _, token = services.issue_token(agent=agent, label="bench")
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(server: str, port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    """``gunicorn`` (WSGI, gthread: the REST API) or ``uvicorn`` (ASGI: REST and /mcp)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "submit_site",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)]),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-secret-key",
        "DB_POOL_MAX_SIZE": str(max(threads, 4)),
        "WEB_THREADS": str(threads),
        "LOG_LEVEL": "WARNING",
    }
    if server == "gunicorn":
        command = [
            sys.executable, "-m", "gunicorn", "config.wsgi:application",
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads),
            "--keep-alive", "30",
            "--log-level", "warning",
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "uvicorn", "config.asgi:application",
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{server} exited")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{server} did not become healthy")


@dataclass
class Result:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    rounds: list[Result] = field(default_factory=list)
    # Milliseconds of CPU per answered request, by kind of process (``_cpu.CpuTally``).
    cpu: dict[str, float] = field(default_factory=dict)

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
            f"\n        cpu ms per request: {cpu_line(self.cpu)}"
        )


Request = Callable[[int], tuple[str, bytes, dict[str, str]]]


def analyze() -> None:
    """Bring PostgreSQL's statistics up to date, as autovacuum keeps them in a running
    deployment. The benchmark's tables are new and grow by thousands of rows a second; a
    prepared statement planned from statistics of an empty table can read every row of the
    agent where the unique key would find one (docs/benchmarks.md)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def drive(
    name: str,
    port: int,
    request: Request,
    expect: int,
    args: argparse.Namespace,
    valid: Callable[[bytes], bool] | None,
    tally: CpuTally,
) -> Result:
    """``args.concurrency`` keep-alive clients sending back to back for warm-up + seconds,
    once PostgreSQL's statistics are up to date (``analyze``, outside the measured time).
    An answer counts when its status is ``expect`` (and ``valid`` accepts its body)."""
    concurrency, seconds, warmup = args.concurrency, args.seconds, args.warmup
    analyze()
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
                body = response.read()
                status = response.status
                if valid is not None and status == expect and not valid(body):
                    status = -1
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
    time.sleep(max(0.0, measure_from - time.monotonic()))
    before = tally.snapshot()
    time.sleep(max(0.0, stop_at - time.monotonic()))
    after = tally.snapshot()
    for thread in threads:
        thread.join()
    answered = len(result.latencies) + sum(result.errors.values())
    result.cpu = tally.per_task(before, after, max(answered, 1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--servers",
        default="gunicorn,uvicorn",
        help="gunicorn: REST under WSGI; uvicorn: MCP under ASGI (comma-separated)",
    )
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


MCP_REVISION = "2025-11-25"


def mcp_session(port: int, token: str) -> str:
    """Open an MCP session (initialize, initialized) as a client that knows tasks; its id."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {**mcp_headers(token), "MCP-Protocol-Version": MCP_REVISION}
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": MCP_REVISION,
            "capabilities": {"tasks": {}},
            "clientInfo": {"name": "countersign-bench", "version": "1"},
        },
    }
    conn.request("POST", "/mcp", json.dumps(initialize), headers)
    response = conn.getresponse()
    response.read()
    session = response.getheader("mcp-session-id")
    if response.status != 200 or not session:
        raise RuntimeError(f"MCP initialize answered {response.status}")
    headers["Mcp-Session-Id"] = session
    conn.request(
        "POST",
        "/mcp",
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        headers,
    )
    conn.getresponse().read()
    conn.close()
    return session


def mcp_headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }


def mcp_answer(body: bytes) -> dict[str, object]:
    """The JSON-RPC answer in a Streamable HTTP response (one SSE event, or plain JSON)."""
    text = body.decode()
    for line in text.splitlines():
        if line.startswith("data:"):
            return json.loads(line[5:])
    return json.loads(text)


def run(args: argparse.Namespace) -> None:
    token = prepare()
    insert_body = json.dumps(EMAIL).encode()
    read_body = json.dumps(READ).encode()

    def rest(call: dict[str, object], path: str = "/api/v1/tool-calls") -> Request:
        def request(index: int) -> tuple[str, bytes, dict[str, str]]:
            body = json.dumps({**call, "session_id": f"bench-{index}"}).encode()
            return (
                path,
                body,
                {
                    "Authorization": f"Bearer {token}",
                    "Idempotency-Key": str(uuid.uuid4()),
                    "Content-Type": "application/json",
                },
            )

        return request

    def mcp(call: dict[str, object], sessions: list[str], *, task: bool) -> Request:
        def request(index: int) -> tuple[str, bytes, dict[str, str]]:
            headers = {
                **mcp_headers(token),
                "MCP-Protocol-Version": MCP_REVISION,
                "Mcp-Session-Id": sessions[index],
            }
            arguments = dict(call["arguments"])  # type: ignore[call-overload]
            params: dict[str, object] = {"name": call["tool"], "arguments": arguments}
            if task:
                params["task"] = {"ttl": 600_000}
                # Without a key, the same write in the same session is the same call
                # (gateway.mcp.calls): each request is another e-mail, as REST's keys are.
                arguments["body"] = f"{arguments['body']} Reference {uuid.uuid4().hex[:12]}."
            message = {"jsonrpc": "2.0", "id": index, "method": "tools/call", "params": params}
            return "/mcp", json.dumps(message).encode(), headers

        return request

    def bare(path: str, body: bytes) -> Request:
        return lambda index: (path, body, {"Content-Type": "application/json"})

    def mcp_ok(body: bytes) -> bool:
        answer = mcp_answer(body)
        result = answer.get("result")
        return isinstance(result, dict) and not result.get("isError", False)

    table: list[tuple[str, str, Result, Result]] = []
    # REST writes against the bare durable write too (submit_urls.bare_durable): the same
    # rows kept, none of Countersign's checks. Measured in the same rounds.
    durable_table: list[tuple[Result, Result]] = []
    for server in args.servers.split(","):
        port = free_port()
        process = start_server(server, port, args.workers, args.threads)
        tally = CpuTally(
            {"server": [process.pid]}, database=urlsplit(os.environ["DATABASE_URL"]).path[1:]
        )
        try:
            if server == "gunicorn":
                door = "REST"
                write, read = rest(EMAIL), rest(READ)
                write_expect, read_expect, check = 202, 200, None
            else:
                door = "MCP"
                # A session per client, as REST's clients each send their own session_id:
                # the calls of one session take turns at its round counter.
                sessions = [mcp_session(port, token) for _ in range(args.concurrency)]
                write, read = mcp(EMAIL, sessions, task=True), mcp(READ, sessions, task=False)
                write_expect, read_expect, check = 200, 200, mcp_ok
            pairs = (
                ("write", ("bare-insert", bare("/bench/bare-insert", insert_body), 201, None),
                 (f"{door}-write", write, write_expect, check)),
                ("read", ("bare-read", bare("/bench/bare-read", read_body), 200, None),
                 (f"{door}-read", read, read_expect, check)),
            )  # fmt: skip
            for kind, (bare_name, bare_request, bare_expect, _), measured in pairs:
                name, request, expect, valid = measured
                durable = server == "gunicorn" and kind == "write"
                rounds: list[tuple[Result, Result]] = []
                durable_rounds: list[tuple[Result, Result]] = []
                for _ in range(args.rounds):
                    base = drive(bare_name, port, bare_request, bare_expect, args, None, tally)
                    timed = drive(name, port, request, expect, args, valid, tally)
                    print(f"[{server}] {base.line()}\n[{server}] {timed.line()}", flush=True)
                    rounds.append((base, timed))
                    if durable:
                        kept = drive(
                            "bare-durable",
                            port,
                            rest(EMAIL, "/bench/bare-durable"),
                            202,
                            args,
                            None,
                            tally,
                        )
                        print(f"[{server}] {kept.line()}", flush=True)
                        durable_rounds.append((kept, timed))
                table.append((server, kind, *merge(rounds)))
                for label, pairs_of in ((bare_name, rounds), ("bare-durable", durable_rounds)):
                    if not pairs_of:
                        continue
                    ratios = [t.rps / b.rps for b, t in pairs_of]
                    print(
                        f"[{server}] {name}/{label}: rounds "
                        + ", ".join(f"{r:.2f}" for r in ratios)
                        + f"; median {statistics.median(ratios):.2f}\n",
                        flush=True,
                    )
                if durable_rounds:
                    durable_table.append(merge(durable_rounds))
        finally:
            process.terminate()
            process.wait(10)

    print(
        f"{args.workers} workers x {args.threads} threads; {args.concurrency} keep-alive "
        f"clients; {args.rounds} rounds of {args.seconds:.0f} s per endpoint after "
        f"{args.warmup:.0f} s warm-up\n"
    )
    for server, _kind, base, timed in table:
        print(f"{server:<8} {base.line()}")
        print(f"{server:<8} {timed.line()}")
        print(f"{server:<8} {summary(base, timed)}\n")
    for kept, timed in durable_table:
        print(f"gunicorn {kept.line()}")
        print(f"gunicorn {summary(kept, timed)}  (the same rows kept, without the checks)\n")


def summary(base: Result, timed: Result) -> str:
    """One line: the median of the rounds' ratios, the p99 ratio, the latency added."""
    ratios = (t.rps / b.rps for b, t in zip(base.rounds, timed.rounds, strict=True))
    return (
        f"{timed.name} / {base.name}: median ratio {statistics.median(ratios):.2f}; "
        f"p99 {timed.percentile(99) / base.percentile(99):.2f}x; "
        f"added p50 {timed.percentile(50) - base.percentile(50):.1f} ms, "
        f"p99 {timed.percentile(99) - base.percentile(99):.1f} ms"
    )


def merge(rounds: list[tuple[Result, Result]]) -> tuple[Result, Result]:
    """Each side's rounds as one result (its latencies pooled), keeping the rounds."""
    merged = []
    for side in (0, 1):
        runs = [pair[side] for pair in rounds]
        merged.append(
            Result(
                name=runs[0].name,
                seconds=sum(r.seconds for r in runs),
                latencies=[x for r in runs for x in r.latencies],
                errors={k: sum(r.errors.get(k, 0) for r in runs) for r in runs for k in r.errors},
                rounds=runs,
                cpu={
                    kind: statistics.median(r.cpu.get(kind, 0.0) for r in runs)
                    for kind in runs[0].cpu
                },
            )
        )
    return merged[0], merged[1]


if __name__ == "__main__":
    main()
