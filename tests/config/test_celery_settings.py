"""Celery's configuration: the beat schedule never piles up runs, and the embedded mode's
eager executor runs without kombu's warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from tests.support import ROOT


def test_every_periodic_task_expires_by_its_next_run() -> None:
    """operations.md: a run that waited in the queue past its next turn is dropped."""
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        expires = entry.get("options", {}).get("expires")
        assert expires is not None, f"{name} never expires: a backlog piles up its runs"
        assert expires <= 2 * entry["schedule"], name


def test_an_eager_task_of_the_embedded_mode_logs_no_broker_warning(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}
    }
    env.update(COUNTERSIGN_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    script = (
        "import django; django.setup()\n"
        "from config.celery import app\n"
        "@app.task(name='tests.noop')\n"
        "def noop(): return None\n"
        "noop.apply_async()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert "succeeded" in run.stderr
    assert "No hostname was supplied" not in run.stderr
