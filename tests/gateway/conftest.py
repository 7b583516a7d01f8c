"""Fixtures of the gateway's tests: a clean slate in Redis for every test, request bodies,
threads released together. The controllable test tool: ``tests.support.probe``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connections

SEND_EMAIL = {
    "tool": "send_email",
    "arguments": {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."},
    "session_id": "run-1",
    "reasoning": "The customer asked for confirmation.",
}
GET_CUSTOMER = {
    "tool": "get_customer",
    "arguments": {"customer_id": "cus_0002"},
    "session_id": "run-1",
}


def in_threads[T](count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``count`` real threads released together; each thread uses its
    own database connection and closes it when done."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        try:
            barrier.wait(timeout=30)
            return work(index)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def redis_url() -> str:
    return settings.REDIS_URL
