"""State that every web and worker process must share: rate limits, breakers, wake-ups.

Services mode keeps it in Redis (``settings.REDIS_URL``). The embedded mode runs one
process, so the same state lives in that process's memory.
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

# Every key Countersign writes to Redis outside the cache and the broker starts with this.
KEY_PREFIX = "countersign"


def shared() -> bool:
    """True when the state lives in Redis (services mode)."""
    return bool(settings.REDIS_URL)


@cache
def _client(url: str) -> redis.Redis:
    # redis-py's pool notices a fork and opens fresh connections in the child, so one
    # client per process (per URL) is safe under gunicorn and Celery prefork.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def redis_client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def key(*parts: object) -> str:
    return ":".join([KEY_PREFIX, *(str(part) for part in parts)])
