"""Exports of 250k, 500k and 1M events through a real gunicorn worker, against COPY of the
same rows; the worker's peak memory; and the auditor's pages on a table of that size.

    python bench/bench_audit_export.py [--events 1000000] [--rounds 3]

COPY is ``COPY (SELECT * ... ORDER BY seq) TO STDOUT`` read by this process; the export
is the auditor's download over HTTP (gunicorn, one sync worker; httpx reading it), in
chain order with the canonical instant. At the largest size each round times COPY, the CSV
and the JSON Lines download one after the other, so that each round's ratios share the
machine's load of the moment; the median round is the figure. The CPU seconds of each
process in the download (the gunicorn worker, PostgreSQL's backends with any parallel
workers, this client) are printed beside it: on a busy machine they say where the time
went better than the wall clock. Aims: export at >= 0.5x COPY's rate; peak RSS of the
worker < 150 MB and flat as the row count grows; every workspace page fast on millions of
rows (index scans, no OFFSET).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _audit_bench import (
    ROOT,
    bench_database,
    bench_env,
    copy_read_seconds,
    load_events_sql,
    setup_django,
)

# The events end now, one a second, so that the analytics window (last 7 days) is full.
NOW = datetime.now(UTC).replace(microsecond=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One gunicorn master and one sync worker, fresh for each measurement."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "1", "--timeout", "900"],
            cwd=ROOT, env=bench_env(SECURE_COOKIES="0"), stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("gunicorn did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_peak_rss_mb(self) -> float:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        status = Path(f"/proc/{children[0]}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def auditor_cookie() -> dict[str, str]:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Permission, User
    from django.contrib.sessions.backends.db import SessionStore

    user = User.objects.create_user("bench-auditor", password="unused-password-1")
    user.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return {"sessionid": session.session_key}


def download(url: str, cookies: dict[str, str]) -> tuple[float, int]:
    started, size = time.perf_counter(), 0
    with httpx.stream("GET", url, cookies=cookies, timeout=900) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 16):
            size += len(chunk)
    return time.perf_counter() - started, size


TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _backend_pids() -> list[int]:
    """The bench database's backends."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend'"
        )
        return [row[0] for row in cursor.fetchall()]


class PostgresCpu:
    """CPU seconds of the bench database's backends, and of any parallel workers they
    start (short-lived children of the postmaster, sampled every 20 ms while measuring)."""

    def __init__(self) -> None:
        self.backends = _backend_pids()
        self.before = {pid: _cpu_seconds(pid) for pid in self.backends}
        status = Path(f"/proc/{self.backends[0]}/status").read_text()
        self.postmaster = int(
            next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1]
        )
        self.parallel: dict[int, float] = {}
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        children = Path(f"/proc/{self.postmaster}/task/{self.postmaster}/children")
        leaders = tuple(f"parallel worker for PID {pid}".encode() for pid in self.backends)
        others: set[int] = set(self.backends)
        while not self.done.wait(0.02):
            for pid in map(int, children.read_text().split()):
                if pid in others:
                    continue
                with contextlib.suppress(OSError):
                    if pid in self.parallel or any(
                        leader in Path(f"/proc/{pid}/cmdline").read_bytes() for leader in leaders
                    ):
                        self.parallel[pid] = _cpu_seconds(pid) or self.parallel.get(pid, 0.0)
                    else:
                        others.add(pid)

    def used(self) -> float:
        self.done.set()
        self.sampler.join()
        now = sum(_cpu_seconds(pid) for pid in self.backends)
        return now - sum(self.before.values()) + sum(self.parallel.values())


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def export_once(fmt: str, end: str, cookies: dict[str, str], log: Path) -> dict[str, float]:
    """One download from a fresh one-worker gunicorn: seconds, bytes, worker peak RSS, and
    the CPU seconds of the worker, PostgreSQL and this client during the download."""
    server = Server(log)
    try:
        url = f"{server.url}/audit/export.{fmt}?end={end}"
        worker = int(
            Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()[0]
        )
        # A first request opens the worker's database connection, so its backend is counted.
        httpx.get(f"{server.url}/audit/export.{fmt}?end=2000-01-01T00:00", cookies=cookies)
        postgres = PostgresCpu()
        before = (_cpu_seconds(worker), _own_cpu())
        seconds, size = download(url, cookies)
        return {
            "seconds": seconds,
            "bytes": size,
            "rss": server.worker_peak_rss_mb(),
            "worker": _cpu_seconds(worker) - before[0],
            "postgres": postgres.used(),
            "client": _own_cpu() - before[1],
        }
    finally:
        server.stop()


def copy_once(sql: str) -> dict[str, float]:
    postgres = PostgresCpu()
    client = _own_cpu()
    seconds, size = copy_read_seconds(sql)
    return {
        "seconds": seconds,
        "bytes": size,
        "postgres": postgres.used(),
        "client": _own_cpu() - client,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds at the largest size")
    options = parser.parse_args()
    log = Path(tempfile.gettempdir()) / f"bench-audit-export-{free_port()}.log"
    with bench_database():
        setup_django()
        start = NOW - timedelta(seconds=options.events)
        loaded = load_events_sql(options.events, start=start.isoformat())
        print(f"loaded {options.events:,} events in {loaded:.1f} s")
        # Loaded already sealed, past the sealer: count them into the analytics summary as
        # the backfill would, so that the analytics page has its week to show.
        from audit import chain

        chain.rebuild_rollups()
        cookies = auditor_cookie()
        sizes = sorted({options.events // 4, options.events // 2, options.events})
        print(
            f"{'rows':>9} {'round':>5} {'format':>6} {'rows/s':>9} {'ratio':>6} {'MB':>5}"
            f" {'peak RSS':>8}   CPU s: {'worker':>6} {'postgres':>8} {'client':>6}"
        )
        ratios: dict[str, list[float]] = {"csv": [], "jsonl": []}
        for rows in sizes:
            end = (start + timedelta(seconds=rows + 1)).strftime("%Y-%m-%dT%H:%M:%S")
            copy_sql = (
                "SELECT * FROM audit_auditevent WHERE occurred_at < "  # noqa: S608 - constant
                f"'{end}+00:00' ORDER BY seq"
            )
            copy_read_seconds(copy_sql)  # warm
            largest = rows == sizes[-1]
            for round_ in range(1, (options.rounds if largest else 1) + 1):
                copy = min((copy_once(copy_sql) for _ in range(2)), key=lambda r: r["seconds"])
                _print_row(rows, round_, "COPY", copy)
                for fmt in ("csv", "jsonl"):
                    result = export_once(fmt, end, cookies, log)
                    ratio = copy["seconds"] / result["seconds"]
                    ratios[fmt] += [ratio] if largest else []
                    _print_row(rows, round_, fmt, result, ratio)
        for fmt, found in ratios.items():
            print(
                f"{fmt} at {sizes[-1]:,} rows: median {statistics.median(found):.2f}x COPY"
                f" over {len(found)} round(s) ({', '.join(f'{r:.2f}' for r in found)})"
            )
        print("aims: ratio >= 0.5x COPY's rate; peak RSS < 150 MB and flat as rows grow")

        print(f"\nworkspace pages on {options.events:,} events (one gunicorn worker, warm):")
        server = Server(log)
        try:
            deep = options.events // 3
            session = min(4242, options.events // 100)  # one that exists at any --events
            pages = [
                "/audit/",
                f"/audit/?before={deep}",
                "/audit/?action=call.execution_finished&outcome=unknown",
                "/audit/?outcome=failed",
                "/audit/?tool=issue_refund&agent=agent-3",
                "/audit/?actor=reviewer-2&action=call.decision",
                f"/audit/?session=run-{session}",
                f"/audit/?start={_at(start, days=2)}&end={_at(start, days=2, hours=1)}",
                f"/audit/?tool=delete_customer&start={_at(start, days=1)}&end={_at(start, days=3)}",
                f"/audit/calls/{_call_id(1234)}/",
                f"/audit/session/?agent=agent-1&session=run-{session}",
                "/audit/analytics/?days=7",
            ]
            with httpx.Client(base_url=server.url, cookies=cookies, timeout=120) as client:
                for page in pages:
                    client.get(page).raise_for_status()  # warm
                    started = time.perf_counter()
                    response = client.get(page)
                    elapsed = (time.perf_counter() - started) * 1000
                    response.raise_for_status()
                    print(f"  {elapsed:8.0f} ms  {page}")
        finally:
            server.stop()


def _print_row(
    rows: int, round_: int, fmt: str, result: dict[str, float], ratio: float | None = None
) -> None:
    rss = f"{result['rss']:>5.0f} MB" if "rss" in result else ""
    worker = f"{result['worker']:>6.2f}" if "worker" in result else ""
    print(
        f"{rows:>9,} {round_:>5} {fmt:>6} {rows / result['seconds']:>9,.0f}"
        f" {f'{ratio:.2f}x' if ratio else '':>6} {result['bytes'] / 1e6:>5.0f} {rss:>8}"
        f"          {worker:>6} {result['postgres']:>8.2f} {result['client']:>6.2f}",
        flush=True,
    )


def _at(start: datetime, **offset: int) -> str:
    return (start + timedelta(**offset)).strftime("%Y-%m-%dT%H:%M")


def _call_id(n: int) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT md5(%s::text)::uuid::text", [n])
        return cursor.fetchone()[0]


if __name__ == "__main__":
    main()
