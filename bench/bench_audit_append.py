"""Audit appends per second with the hash chain vs plain inserts, at 1, 8 and 32 writers.

    python bench/bench_audit_append.py [--seconds 8] [--writers 1,8,32] [--repeats 2]

Both sides run the same code path, ``audit.log.record()`` (masking, the ORM insert, one
transaction per event) in separate writer processes. "plain" points the model at a twin
table with the same columns and indexes but no triggers, and no sealer runs. "chain" writes
the real table (append-only triggers) while the sealer runs beside the writers, as beat
runs it; its rate counts only events that were sealed: appended events / (writing time +
the time the sealer needed to catch up afterwards). Aim: chain >= 0.8x plain.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from _audit_bench import ROOT, bench_database, bench_env, event_data, setup_django

HERE = Path(__file__).resolve()


def writer(mode: str, seconds: float, go: Path, out: Path) -> None:
    setup_django()
    from audit.log import record
    from audit.models import AuditEvent

    if mode == "plain":
        AuditEvent._meta.db_table = "audit_plain"  # same code path, twin table, no triggers
    record(action="bench.warmup", data={})  # connect before the start line
    while not go.exists():
        time.sleep(0.005)
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        record(
            action="call.submitted",
            outcome="pending",
            session_id=f"run-{n // 10}",
            data=event_data(n),
        )
        n += 1
    out.write_text(str(n))


def sealer(stop: Path, out: Path) -> None:
    setup_django()
    from audit import chain

    while not stop.exists():
        chain.seal_pending()
        time.sleep(0.5)  # beat's pace (its default is 2 s), so writers and sealer overlap
    started = time.monotonic()
    while chain.seal_pending():
        pass
    out.write_text(str(time.monotonic() - started))


def run(mode: str, writers: int, seconds: float, tmp: Path) -> tuple[int, float, float]:
    """(events appended, seconds writing, seconds the sealer needed afterwards)."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp))  # fresh start/stop files for every run
    go, stop = run_dir / "go", run_dir / "stop"
    outs = [run_dir / f"out-{i}" for i in range(writers)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), "--writer", mode, "--seconds", str(seconds),
             "--go", str(go), "--out", str(out)],
            cwd=ROOT, env=bench_env(),
        )
        for out in outs
    ]  # fmt: skip
    sealer_out = run_dir / "sealer"
    sealer_proc = None
    if mode == "chain":
        sealer_proc = subprocess.Popen(
            [sys.executable, str(HERE), "--sealer", "--go", str(stop), "--out", str(sealer_out)],
            cwd=ROOT, env=bench_env(),
        )  # fmt: skip
    _wait_connected(writers + (1 if sealer_proc else 0), mode)
    go.touch()
    for proc in procs:
        proc.wait()
    drain = 0.0
    if sealer_proc is not None:
        stop.touch()
        sealer_proc.wait()
        drain = float(sealer_out.read_text())
    return sum(int(out.read_text()) for out in outs), seconds, drain


def _wait_connected(expected: int, mode: str) -> None:
    """Every writer has made its warm-up insert (Django is set up, connected)."""
    table = "audit_plain" if mode == "plain" else "audit_auditevent"
    from django.db import connection

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table} WHERE action = 'bench.warmup'")  # noqa: S608
            writers_ready = cursor.fetchone()[0]
        if writers_ready >= expected - (1 if mode == "chain" else 0):
            time.sleep(1.0)  # the sealer process has had time to start too
            return
        time.sleep(0.2)
    raise TimeoutError("writers did not start")


def reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute("TRUNCATE audit_auditevent, audit_plain")
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
        cursor.execute("CHECKPOINT")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writer", choices=["plain", "chain"])
    parser.add_argument("--sealer", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--writers", default="1,8,32")
    parser.add_argument("--repeats", type=int, choices=[1, 2], default=2)
    parser.add_argument("--go", type=Path)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    if options.writer:
        return writer(options.writer, options.seconds, options.go, options.out)
    if options.sealer:
        return sealer(options.go, options.out)

    with bench_database(), TemporaryDirectory() as tmp:
        setup_django()
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE audit_plain (LIKE audit_auditevent INCLUDING ALL)")
        print(
            f"{'writers':>7} {'plain/s':>9} {'chain/s':>9} {'sealer catch-up':>15} {'chain/plain':>11}"
        )
        for count in [int(n) for n in options.writers.split(",")]:
            rates: dict[str, list[float]] = {"plain": [], "chain": []}
            drains: list[float] = []
            # ABBA order, so drift in the machine's load hits both sides alike.
            for mode in ("plain", "chain", "chain", "plain")[: 2 * options.repeats]:
                reset()
                appended, seconds, drain = run(mode, count, options.seconds, Path(tmp))
                rates[mode].append(appended / (seconds + drain))
                drains += [drain] if mode == "chain" else []
            plain, chained = (sum(rates[m]) / len(rates[m]) for m in ("plain", "chain"))
            print(
                f"{count:>7} {plain:>9,.0f} {chained:>9,.0f} {max(drains):>14.2f}s "
                f"{chained / plain:>10.2f}x",
                flush=True,
            )
        print("aim: chain/plain >= 0.8x at every concurrency")


if __name__ == "__main__":
    main()
