"""Separate processes that append audit events as fast as they can (the concurrency test's
writers). Run as ``python -m tests.support.audit_writer --tag w1 --tag w2 --count 500 --go
FILE``: one writer process for each tag."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", action="append", required=True, help="one writer each")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--go", type=Path, required=True, help="start when this file exists")
    options = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import connections

    # Django starts once (a second or more of imports), then each writer is a process of
    # its own, forked with no connection open: each opens its own to the database.
    connections.close_all()
    children = {}
    for tag in options.tag:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                write(tag, options.count, options.go)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                connections.close_all()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        children[pid] = tag
    failed = []
    for pid, tag in children.items():
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(tag)
    if failed:
        raise SystemExit(f"writers {failed} failed")


def write(tag: str, count: int, go: Path) -> None:
    from django.db import transaction

    from audit.log import record

    deadline = time.monotonic() + 60
    while not go.exists():  # every writer starts at once
        if time.monotonic() > deadline:
            raise SystemExit("never told to start")
        time.sleep(0.01)
    n = 0
    while n < count:
        # Mostly one event per transaction; every tenth transaction carries five.
        batch = 5 if n % 50 == 0 and n + 5 <= count else 1
        with transaction.atomic():
            for _ in range(batch):
                record(
                    action="test.concurrent",
                    outcome="ok",
                    session_id=tag,
                    data={"writer": tag, "n": n, "text": f"event {n} of {tag}"},
                )
                n += 1


if __name__ == "__main__":
    main()
