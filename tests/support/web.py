"""A real Countersign web process for tests: `uvicorn config.asgi:application`, the way it
is deployed, against the test database and Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import ROOT
from tests.support.workers import worker_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class WebProcess:
    url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_web(
    *, tmp_path: Path, env: dict[str, str] | None = None, app: str = "config.asgi:application"
) -> Iterator[WebProcess]:
    """Countersign's ASGI app (or ``app``, one that wraps it) in its own process, against the
    test database and Redis."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_asgi(
        app,
        port=port,
        tmp_path=tmp_path,
        env=worker_env(PUBLIC_URL=url, PORT=str(port), **(env or {})),
        ready="/healthz",
    ) as web:
        yield web


@contextmanager
def running_asgi(
    app: str,
    *,
    tmp_path: Path,
    env: dict[str, str],
    ready: str,
    port: int | None = None,
) -> Iterator[WebProcess]:
    """An ASGI app (``module:attribute``) served by uvicorn in its own process on a free
    port, once ``ready`` answers 200."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / f"asgi-{uuid.uuid4().hex[:8]}.log"
    command = [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with _serving(command, env=env, url=url, ready=ready, log_path=log_path) as web:
        yield web


@contextmanager
def running_gunicorn(
    *, tmp_path: Path, threads: int, env: dict[str, str] | None = None
) -> Iterator[WebProcess]:
    """Countersign's WSGI app (``config.wsgi``) served by one gunicorn worker of ``threads``
    threads (gthread; the sync worker for 1), against the test database and Redis."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / f"gunicorn-{uuid.uuid4().hex[:8]}.log"
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
        "--workers", "1", "--threads", str(threads), "--timeout", "120",
        *(["--worker-class", "gthread"] if threads > 1 else []),
    ]  # fmt: skip
    environment = worker_env(
        PUBLIC_URL=url, PORT=str(port), WEB_THREADS=str(threads), **(env or {})
    )
    with _serving(command, env=environment, url=url, ready="/healthz", log_path=log_path) as web:
        yield web


@contextmanager
def _serving(
    command: list[str], *, env: dict[str, str], url: str, ready: str, log_path: Path
) -> Iterator[WebProcess]:
    """``command`` in a process group of its own, once ``url`` + ``ready`` answers 200;
    stopped (SIGTERM, then SIGKILL) when the block ends."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    web = WebProcess(url=url, log_path=log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}{ready}", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[2]} did not come up:\n{web.log[-4000:]}")
            time.sleep(0.2)
        yield web
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
