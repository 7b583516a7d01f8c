"""Real Celery worker processes for tests: started against the test database and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import redis
from django.conf import settings
from django.db import connection

from config.celery import app
from tests.support import ROOT


def worker_database_url() -> str:
    """The URL of the test database (not the one in the environment) for worker processes."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def worker_env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        DATABASE_URL=worker_database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
        SECRET_KEY=settings.SECRET_KEY,
        COUNTERSIGN_VAR_DIR=str(settings.VAR_DIR),
        PYTHONUNBUFFERED="1",
        SANDBOX_ENABLED="1",
    )
    env.update(extra)
    return env


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path):
        self.proc = proc
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"celery worker exited with {self.proc.returncode}:\n{self.log[-3000:]}"
                )
            time.sleep(0.1)
        raise TimeoutError(f"celery worker not ready after {timeout}s:\n{self.log[-3000:]}")

    def signal_group(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.proc.wait(5)


def purge_queue() -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(settings.CELERY_TASK_DEFAULT_QUEUE)


def queued_copies(task: str, about: object) -> list[datetime | None]:
    """The tasks named ``task`` with ``about`` (an id) among their arguments, waiting in the
    broker's queue (Redis): when each expires (None: never)."""
    queued = redis.Redis.from_url(settings.REDIS_URL).lrange(
        settings.CELERY_TASK_DEFAULT_QUEUE, 0, -1
    )
    headers = [json.loads(message)["headers"] for message in queued]
    return [
        datetime.fromisoformat(h["expires"]) if h.get("expires") else None
        for h in headers
        if h["task"] == task and str(about) in h["argsrepr"]
    ]


@contextmanager
def running_worker(
    *,
    concurrency: int = 2,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    queue: str | None = None,
    ready_within: float = 30,
) -> Iterator[Worker]:
    """A `celery worker` in its own process group (so kill -9 reaches its children too),
    once it says it is ready (``ready_within`` seconds at most).

    It consumes ``queue``, else the ``CELERY_QUEUE`` given in ``env``, else the default."""
    log_path = tmp_path / f"worker-{uuid.uuid4().hex[:8]}.log"
    queue = queue or (env or {}).get("CELERY_QUEUE") or settings.CELERY_TASK_DEFAULT_QUEUE
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker",
        "--loglevel", "INFO", "--concurrency", str(concurrency),
        "--queues", queue,
        "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=worker_env(**(env or {})),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(proc, log_path)
    try:
        worker.wait_ready(ready_within)
        yield worker
    finally:
        worker.stop()


def wait_for(
    predicate, *, timeout: float = 30, interval: float = 0.1, message: str = "condition"
) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
