"""The baselines of bench_executor.py: bare Celery tasks with no claim, fence or audit.

* ``noop`` only notes when it ran;
* ``same_effect`` does what an executed ``send_email`` call does to the world, and nothing
  else: the sandbox handler's own write (the effect row, the outbox message, the effect's
  summary), in its own transaction, then notes when it ran.

Loaded into the benchmark's workers with ``celery worker --include bench._executor_baselines``.
"""

from __future__ import annotations

import os
import time
from typing import Any
from uuid import UUID

import redis
from celery import shared_task

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _client


@shared_task(name="bench.noop", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def noop(key: str, sent_at: float) -> None:
    _redis().rpush(key, f"{sent_at} {time.time()}")


@shared_task(
    name="bench.same_effect", ignore_result=True, acks_late=True, reject_on_worker_lost=True
)
def same_effect(key: str, sent_at: float, call_id: str, arguments: dict[str, Any]) -> None:
    """The handler of ``send_email`` called straight, with the key an executed call passes
    (its transaction is the handler's own, as when the executor runs it)."""
    from sandbox.tools import send_email  # the sandbox's tools register once Django is set up
    from tools_registry.registry import ToolContext

    ctx = ToolContext(call_id=UUID(call_id), idempotency_key=f"countersign-{call_id}", timeout=10)
    send_email.handler(ctx, arguments)
    _redis().rpush(key, f"{sent_at} {time.time()}")
