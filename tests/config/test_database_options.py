"""The database settings taken from DATABASE_URL: the URL's own options reach the
connection, and hot-path statements are prepared, with or without the pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = (
    "import django; django.setup()\n"
    "from django.db import connection\n"
    "with connection.cursor() as cursor:\n"
    "    cursor.execute('SHOW application_name')\n"
    "    print(cursor.fetchone()[0])\n"
    "print(connection.connection.prepare_threshold)\n"
)


@pytest.mark.parametrize("pool", ["1", "0"])
def test_the_url_s_options_reach_the_connection_and_statements_are_prepared(pool: str) -> None:
    url = os.environ.get("DATABASE_URL", "")
    assert url.startswith("postgres"), "this test needs PostgreSQL (DATABASE_URL)"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"{url.split('?')[0]}?application_name=countersign-options-check",
        "DB_POOL": pool,
    }
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["countersign-options-check", "5"]
