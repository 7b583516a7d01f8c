"""Shared pieces of the audit benchmarks (not a benchmark itself: the name has no bench_).

Each benchmark runs against its own database, ``<DATABASE_URL's name>_bench_audit`` (or
BENCH_DATABASE_URL), created and migrated here and dropped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audit.canonical import GENESIS_HASH, link_hash, link_text  # noqa: E402


def bench_database_url() -> str:
    if explicit := os.environ.get("BENCH_DATABASE_URL"):
        return explicit
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/countersign"
    parts = urlparse(base)
    return urlunparse(parts._replace(path=parts.path.rstrip("/") + "_bench_audit"))


def bench_env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        DATABASE_URL=bench_database_url(),
        BENCH_DATABASE_URL=bench_database_url(),
        SECRET_KEY=env.get("SECRET_KEY") or "bench-only-secret",
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="WARNING",
    )
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


def _admin_connect():  # type: ignore[no-untyped-def]
    import psycopg

    parts = urlparse(bench_database_url())
    admin = urlunparse(parts._replace(path="/postgres"))
    return psycopg.connect(admin, autocommit=True), parts.path.lstrip("/")


def create_database() -> None:
    conn, name = _admin_connect()
    with conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT, env=bench_env(), check=True,
    )  # fmt: skip


def drop_database() -> None:
    conn, name = _admin_connect()
    with conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def bench_database():  # type: ignore[no-untyped-def]
    create_database()
    try:
        yield bench_database_url()
    finally:
        drop_database()


def setup_django() -> None:
    os.environ.update(bench_env())
    import django

    django.setup()


ACTIONS = [
    ("call.submitted", "pending"),
    ("call.decision", "approve"),
    ("call.approved", "approved"),
    ("call.execution_started", "executing"),
    ("call.execution_finished", "succeeded"),
]
TOOLS = ["send_email", "issue_refund", "update_customer", "get_customer", "search_docs"]


def event_data(n: int) -> dict:
    """About 400 bytes of realistic, already masked event data."""
    return {
        "arguments": {
            "to": "[masked:email:1a2b3c4d]",
            "subject": f"Your refund #{n}",
            "body": f"Hello, your refund of {n % 500}.00 EUR is on its way. Kind regards.",
        },
        "reasoning": f"The customer asked in ticket {n} for a confirmation of the refund.",
        "token_cost": {
            "input_tokens": 800 + n % 400,
            "output_tokens": 120 + n % 90,
            "usd": round((n % 97) / 1000, 3),
        },
        "arguments_hash": hashlib.sha256(str(n).encode()).hexdigest(),
        "attempt": 1,
        "fence": 1,
    }


def jsonb_text(value: object) -> str:
    """PostgreSQL's text of a jsonb value, for the simple values event_data() makes: keys by
    length then bytes, ", " and ": " between items, numbers as PostgreSQL prints them."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return (
            "{"
            + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(v)}" for k, v in items)
            + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@contextmanager
def secondary_indexes_dropped():  # type: ignore[no-untyped-def]
    """Load without maintaining every index row by row; build them once afterwards."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_auditevent'"
            " AND indexname NOT IN ('audit_auditevent_pkey', 'audit_auditevent_seq_key')"
        )
        saved = cursor.fetchall()
        for name, _ in saved:
            cursor.execute(f'DROP INDEX "{name}"')
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for _, definition in saved:
                cursor.execute(definition)


def load_sealed_events(count: int, *, start: datetime | None = None, step_ms: int = 500) -> float:
    """Insert ``count`` events already sealed into a valid chain, with COPY. Returns seconds."""
    from django.db import connection

    started = time.perf_counter()
    moment = start or datetime(2026, 1, 1, tzinfo=UTC)
    prev_hash = GENESIS_HASH
    columns = (
        "id, occurred_at, action, outcome, actor_type, actor_id, actor_label, agent_name, "
        "tool_name, session_id, call_id, data, seq, prev_hash, hash, sealed_at"
    )
    sealed_at = datetime(2026, 6, 1, tzinfo=UTC)
    rng = random.Random(7)
    with (
        secondary_indexes_dropped(),
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY audit_auditevent ({columns}) FROM STDIN") as copy,
    ):
        for n in range(1, count + 1):
            action, outcome = ACTIONS[n % len(ACTIONS)]
            occurred = moment + timedelta(
                milliseconds=n * step_ms, microseconds=rng.randrange(0, 1000)
            )
            data = event_data(n)
            call_id = str(uuid.UUID(int=n // len(ACTIONS) + 1))
            tool = TOOLS[(n // len(ACTIONS)) % len(TOOLS)]
            label = f"agent-{n % 7}"
            text = link_text(
                seq=n, id=n, occurred_at=occurred.isoformat(), action=action, outcome=outcome,
                actor_type="agent", actor_id=str(n % 7), actor_label=label, agent_name=label,
                tool_name=tool, session_id=f"run-{n // 50}", call_id=call_id,
                data_text=jsonb_text(data),
            )  # fmt: skip
            head = link_hash(prev_hash, text)
            copy.write_row(
                (
                    n, occurred, action, outcome, "agent", str(n % 7), label, label, tool,
                    f"run-{n // 50}", call_id, json.dumps(data), n, prev_hash, head, sealed_at,
                )
            )  # fmt: skip
            prev_hash = head
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('audit_auditevent', 'id'), %s)", [count + 1]
        )
        cursor.execute("VACUUM ANALYZE audit_auditevent")
    return time.perf_counter() - started


def copy_read_seconds(sql: str) -> tuple[float, int]:
    """Time for PostgreSQL's COPY to hand ``sql``'s rows to this client; (seconds, bytes)."""
    from django.db import connection

    started, size = time.perf_counter(), 0
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY ({sql}) TO STDOUT") as copy:
        for block in copy:
            size += len(block)
    return time.perf_counter() - started, size


def best_of(runs: int, measure):  # type: ignore[no-untyped-def]
    """The fastest of ``runs`` (the machine is shared; the best run is the least disturbed)."""
    results = [measure() for _ in range(runs)]
    return min(results, key=lambda r: r[0] if isinstance(r, tuple) else r)


def load_events_sql(count: int, *, start: str = "2026-01-01T00:00:00+00:00") -> float:
    """``count`` realistic events, one a second from ``start``, generated by PostgreSQL
    (fast; seq and hashes are placeholders, so this chain does not verify). Seconds taken."""
    from django.db import connection

    started = time.perf_counter()
    with secondary_indexes_dropped(), connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO audit_auditevent (id, occurred_at, action, outcome, actor_type, actor_id,
                actor_label, agent_name, tool_name, session_id, call_id, data, seq, prev_hash,
                hash, sealed_at)
            SELECT g, %s::timestamptz + g * interval '1 second',
              (ARRAY['call.submitted','call.decision','call.approved','call.execution_started',
                     'call.execution_finished'])[1 + g %% 5],
              CASE g %% 5 WHEN 0 THEN 'pending'
                WHEN 1 THEN (CASE WHEN g %% 7 = 0 THEN 'reject' ELSE 'approve' END)
                WHEN 2 THEN 'approved' WHEN 3 THEN 'executing'
                ELSE (CASE WHEN g %% 101 = 0 THEN 'unknown' WHEN g %% 37 = 0 THEN 'failed'
                           ELSE 'succeeded' END) END,
              CASE g %% 5 WHEN 1 THEN 'user' ELSE 'agent' END,
              (g %% 7)::text,
              CASE g %% 5 WHEN 1 THEN 'reviewer-' || (g %% 4) ELSE 'agent-' || (g %% 7) END,
              'agent-' || (g %% 7),
              (ARRAY['send_email','issue_refund','update_customer','get_customer',
                     'search_docs','delete_customer'])[1 + (g / 5) %% 6],
              'run-' || (g / 50),
              md5((g / 5)::text)::uuid,
              jsonb_build_object(
                'arguments', jsonb_build_object('to', '[masked:email:1a2b3c4d]',
                    'subject', 'Your refund #' || g, 'body', 'Your refund of ' || (g %% 500) || '.00 EUR is on its way.'),
                'reasoning', 'The customer asked in ticket ' || g || ' for a confirmation.',
                'token_cost', jsonb_build_object('input_tokens', 800 + g %% 400,
                    'output_tokens', 120 + g %% 90, 'usd', round((g %% 97) / 1000.0, 3)),
                'attempt', 1, 'fence', 1),
              g, repeat('0', 64), md5(g::text) || md5(g::text), now()
            FROM generate_series(1, %s) AS g
            """,
            [start, count],
        )
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('audit_auditevent', 'id'), %s)", [count + 1]
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audit_auditevent")
    return time.perf_counter() - started
