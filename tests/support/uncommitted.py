"""Another person's change, under way: done in another thread's transaction, not yet
committed while the block's requests run, then committed a moment later. Races between two
admins' saves are proven with it against PostgreSQL (its row locks make the block wait)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, transaction


@contextmanager
def uncommitted(work: Callable[[], Any], *, commits_after: float = 1.0) -> Iterator[None]:
    """``work`` done in a transaction of another thread before the block starts, which
    commits ``commits_after`` seconds later; the block ends once it has."""
    done = threading.Event()

    def other() -> None:
        try:
            with transaction.atomic():
                work()
                done.set()
                time.sleep(commits_after)
        finally:
            connection.close()

    thread = threading.Thread(target=other)
    thread.start()
    assert done.wait(10), "the other transaction did not do its work in 10 s"
    try:
        yield
    finally:
        thread.join()
