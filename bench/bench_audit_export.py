"""Exports of 250k, 500k and 1M events through a real gunicorn worker, against COPY of the
same rows; the worker's peak memory; and the auditor's pages on a table of that size.

    python bench/bench_audit_export.py [--events 1000000]

COPY is ``COPY (SELECT * ... ORDER BY seq) TO STDOUT`` read by this process; the export
is the auditor's download over HTTP (gunicorn, one sync worker; httpx reading it), in
chain order with the canonical instant. Aims: export at >= 0.5x COPY's rate; peak RSS of the worker < 150 MB and flat as the row
count grows; every workspace page fast on millions of rows (index scans, no OFFSET).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
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
            f"{'rows':>9} {'format':>6} {'COPY rows/s':>12} {'export rows/s':>14} {'ratio':>6} {'MB':>6} {'worker peak RSS':>16}"
        )
        for rows in sizes:
            end = (start + timedelta(seconds=rows + 1)).strftime("%Y-%m-%dT%H:%M:%S")
            copy_sql = (
                "SELECT * FROM audit_auditevent WHERE occurred_at < "  # noqa: S608 - constant
                f"'{end}+00:00' ORDER BY seq"
            )
            copy_read_seconds(copy_sql)  # warm
            copy_seconds = min(copy_read_seconds(copy_sql)[0] for _ in range(2))
            runs = 2 if rows == sizes[-1] else 1  # the machine is shared: best of two
            for fmt in ("csv", "jsonl"):
                results = []
                for _ in range(runs):
                    server = Server(log)
                    try:
                        url = f"{server.url}/audit/export.{fmt}?end={end}"
                        results.append((*download(url, cookies), server.worker_peak_rss_mb()))
                    finally:
                        server.stop()
                seconds, size, _ = min(results)
                peak = max(r[2] for r in results)
                ratio = copy_seconds / seconds
                print(
                    f"{rows:>9,} {fmt:>6} {rows / copy_seconds:>12,.0f} {rows / seconds:>14,.0f} "
                    f"{ratio:>5.2f}x {size / 1e6:>6.0f} {peak:>13.0f} MB",
                    flush=True,
                )
        print("aims: ratio >= 0.5x COPY's rate; peak RSS < 150 MB and flat as rows grow")

        print(f"\nworkspace pages on {options.events:,} events (one gunicorn worker, warm):")
        server = Server(log)
        try:
            deep = options.events // 3
            pages = [
                "/audit/",
                f"/audit/?before={deep}",
                "/audit/?action=call.execution_finished&outcome=unknown",
                "/audit/?outcome=failed",
                "/audit/?tool=issue_refund&agent=agent-3",
                "/audit/?actor=reviewer-2&action=call.decision",
                "/audit/?session=run-4242",
                f"/audit/?start={_at(start, days=2)}&end={_at(start, days=2, hours=1)}",
                f"/audit/?tool=delete_customer&start={_at(start, days=1)}&end={_at(start, days=3)}",
                f"/audit/calls/{_call_id(1234)}/",
                "/audit/session/?agent=agent-1&session=run-4242",
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


def _at(start: datetime, **offset: int) -> str:
    return (start + timedelta(**offset)).strftime("%Y-%m-%dT%H:%M")


def _call_id(n: int) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT md5(%s::text)::uuid::text", [n])
        return cursor.fetchone()[0]


if __name__ == "__main__":
    main()
