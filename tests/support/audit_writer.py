"""A separate process that appends audit events as fast as it can (the concurrency test's
writer). Run as ``python -m tests.support.audit_writer --tag w1 --count 500 --go FILE``."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--go", type=Path, required=True, help="start when this file exists")
    options = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import transaction

    from audit.log import record

    deadline = time.monotonic() + 60
    while not options.go.exists():  # every writer starts at once
        if time.monotonic() > deadline:
            raise SystemExit("never told to start")
        time.sleep(0.01)
    n = 0
    while n < options.count:
        # Mostly one event per transaction; every tenth transaction carries five.
        batch = 5 if n % 50 == 0 and n + 5 <= options.count else 1
        with transaction.atomic():
            for _ in range(batch):
                record(
                    action="test.concurrent",
                    outcome="ok",
                    session_id=options.tag,
                    data={"writer": options.tag, "n": n, "text": f"event {n} of {options.tag}"},
                )
                n += 1


if __name__ == "__main__":
    main()
