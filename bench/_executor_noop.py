"""The baseline of bench_executor.py: a bare Celery task that only notes when it ran.

Loaded into the benchmark's workers with ``celery worker --include bench._executor_noop``.
"""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task

_client: redis.Redis | None = None


@shared_task(name="bench.noop", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def noop(key: str, sent_at: float) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    _client.rpush(key, f"{sent_at} {time.time()}")
