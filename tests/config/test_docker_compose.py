"""docker-compose.yml: the order its services start in."""

from __future__ import annotations

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
