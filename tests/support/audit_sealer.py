"""Separate processes that seal and anchor the audit chain in a loop, as two beat processes
started by mistake would (the concurrency test's sealers). Run as ``python -m
tests.support.audit_sealer --sealers 2 --go FILE --stop FILE``: each process prints the
number of events it sealed, and logs warnings and errors to its stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sealers", type=int, default=2)
    parser.add_argument("--go", type=Path, required=True, help="start when this file exists")
    parser.add_argument("--stop", type=Path, required=True, help="stop when this file exists")
    options = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import connections

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    # One Django start-up, then each sealer forked with no connection open.
    connections.close_all()
    children = []
    for _ in range(options.sealers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                print(seal(options.go, options.stop), flush=True)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                connections.close_all()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        children.append(pid)
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    if failed:
        raise SystemExit(f"{failed} sealers failed")


def seal(go: Path, stop: Path) -> int:
    from audit import chain

    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("never told to start")
        time.sleep(0.01)
    sealed = 0
    while not stop.exists():
        sealed += chain.seal_and_anchor()
    return sealed


if __name__ == "__main__":
    main()
