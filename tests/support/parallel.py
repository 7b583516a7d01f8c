"""Each of a parallel run's pytest processes (pytest-xdist's workers) gets a world of its own.

Loaded with ``-p`` (pyproject's addopts), so that it runs before pytest-django loads the
settings: the settings read these variables once. For worker ``gwN`` of a run:

* its own Redis database (``REDIS_URL``'s number + 1 + N): the rate windows, breakers,
  long-poll channels' state, the cache and the Celery broker of one process's tests are
  never another's (the tests clear Countersign's keys between tests);
* its own Celery queue (``CELERY_QUEUE`` + ``-gwN``), so a worker process started by one
  test never takes another's tasks;
* its own ``var`` directory (the audit anchors, the demo's remembered secrets).

The test database is pytest-django's own per worker (``test_<name>_gwN``). A run without
xdist (``-n 0``) changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]


def _worker_index(name: str) -> int:
    # xdist names its workers gw0, gw1, ...
    return int(name.removeprefix("gw"))


def _redis_url_for(url: str, index: int) -> str:
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    number = base + 1 + index
    if number > 15:  # Redis has 16 databases unless configured otherwise
        raise SystemExit(
            f"REDIS_URL names database {base}; a parallel run needs the databases after it "
            f"(up to {number}): use a lower one, or TEST_PROCESSES=1."
        )
    return urlunsplit(parts._replace(path=f"/{number}"))


def _isolate(worker: str) -> None:
    index = _worker_index(worker)
    if url := os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = _redis_url_for(url, index)
    os.environ["CELERY_QUEUE"] = f"{os.environ.get('CELERY_QUEUE', 'countersign')}-{worker}"
    var = Path(os.environ.get("COUNTERSIGN_VAR_DIR") or ROOT / "var") / f"tests-{worker}"
    var.mkdir(parents=True, exist_ok=True)
    os.environ["COUNTERSIGN_VAR_DIR"] = str(var)


if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _isolate(worker)
