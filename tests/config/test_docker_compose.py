"""docker-compose.yml: the order its services start in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import ROOT


def test_the_database_is_healthy_only_once_it_listens_on_tcp() -> None:
    """On a first start the postgres image runs a temporary server, on its Unix socket only,
    while it creates the database; then it restarts to listen on TCP. ``pg_isready`` without
    a host asks the socket: "ready" during that window, and migrate (over TCP, host db)
    would fail, leaving the app waiting on it for good."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    probe = " ".join(compose["services"]["db"]["healthcheck"]["test"])
    assert "pg_isready" in probe
    assert "-h 127.0.0.1" in probe or "--host=127.0.0.1" in probe, probe


def interpolated(value: str, env: dict[str, str]) -> str:
    """``value`` as docker compose reads it: ${NAME}, ${NAME:-default} and ${NAME:?error}."""

    def one(match: re.Match[str]) -> str:
        name, how, default = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert how != ":?", f"{name} is required: {default}"
        return default or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def test_a_generated_postgres_password_reaches_the_app_as_is(tmp_path: Path) -> None:
    """POSTGRES_PASSWORD went into DATABASE_URL as typed: a password from ``openssl rand
    -base64`` (with / and +), or with # or ?, is no URL's, and every app process stopped at
    start. The db service and the app's connections must agree on it, character for
    character."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    password = "Zm9v/YmFy+cXV4#?=@%"
    outer = {"POSTGRES_PASSWORD": password, "SECRET_KEY": "compose-test-secret"}
    db_env = compose["services"]["db"]["environment"]
    assert interpolated(db_env["POSTGRES_PASSWORD"], outer) == password
    app_env = {
        name: interpolated(str(value), outer)
        for name, value in compose["services"]["web"]["environment"].items()
    }
    script = (
        "import os; from django.conf import settings\n"
        "print(settings.DATABASES['default'].get('PASSWORD') or os.environ.get('PGPASSWORD'))\n"
    )
    environment = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "COUNTERSIGN_VAR_DIR": str(tmp_path),
        **app_env,
        # The anchor's volume is the container's; here, a file of the test's own.
        "AUDIT_ANCHOR_PATH": str(tmp_path / "anchor.jsonl"),
    }
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == password
