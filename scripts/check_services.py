"""Stop early, and say how to fix it, when PostgreSQL or Redis is not reachable for the tests."""

from __future__ import annotations

import os
import sys

import psycopg
import psycopg.conninfo
import psycopg.sql
import redis


def ensure_database(database_url: str) -> None:
    """Connect through the maintenance database and create the project's one if missing
    (pytest creates its own test_ database, but makemigrations --check reads this one)."""
    name = psycopg.conninfo.conninfo_to_dict(database_url).get("dbname") or "postgres"
    with psycopg.connect(
        database_url, connect_timeout=5, dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def main() -> int:
    database_url = os.environ["DATABASE_URL"]
    redis_url = os.environ["REDIS_URL"]
    problems = []
    try:
        ensure_database(database_url)
    except Exception as exc:
        problems.append(
            f"PostgreSQL is not reachable at {database_url} ({type(exc).__name__}: {exc}).\n"
            "  Start it, on Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "  or point DATABASE_URL at a server where the user may create databases."
        )
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
    except Exception as exc:
        problems.append(
            f"Redis is not reachable at {redis_url} ({type(exc).__name__}: {exc}).\n"
            "  Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no\n"
            "  or point REDIS_URL at a running Redis."
        )
    for problem in problems:
        print(f"make test: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
