"""The settings read from the environment, in services mode as an operator starts it: a value
they cannot read stops the start with the setting's name (never read as off or as its
default), and HTTPS-only cookies come with HSTS."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT, starts


def services(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a process of its own, whose settings are read from ``env`` on top
    of the test run's services (a process started outside pytest, ``tests.support.starts``:
    not the tests' defaults)."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "COUNTERSIGN_VAR_DIR": str(tmp_path),
        **env,
    }
    return starts.start(script, environment, cwd=ROOT)


READ = "from django.conf import settings\nprint(settings.{name})\n"


@pytest.mark.parametrize("spelling", ["1", "true", "Yes", " on "])
def test_a_boolean_reads_each_spelling_of_on(tmp_path: Path, spelling: str) -> None:
    run = services(tmp_path, READ.format(name="SESSION_COOKIE_SECURE"), SECURE_COOKIES=spelling)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True"]


@pytest.mark.parametrize("spelling", ["0", "false", "No", "OFF"])
def test_a_boolean_reads_each_spelling_of_off(tmp_path: Path, spelling: str) -> None:
    run = services(tmp_path, READ.format(name="SESSION_COOKIE_SECURE"), SECURE_COOKIES=spelling)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False"]


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        # Read as off, each of these turned a protection off in services mode.
        ("SECURE_COOKIES", "ture", "SESSION_COOKIE_SECURE"),
        ("REQUIRE_2FA", "yes!", "REQUIRE_2FA"),
        ("BEHIND_PROXY", "enabled", "SECURE_PROXY_SSL_HEADER"),
    ],
)
def test_a_boolean_that_is_no_boolean_stops_the_start(
    tmp_path: Path, name: str, value: str, setting: str
) -> None:
    run = services(tmp_path, READ.format(name=setting), **{name: value})
    assert run.returncode != 0, f"{name}={value!r} was read as {run.stdout.strip()}"
    assert "ImproperlyConfigured" in run.stderr and f"{name}={value!r}" in run.stderr


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        # A negative timeout, page size or body limit broke every use of it later
        # (APPROVALS_QUEUE_PAGE_SIZE=-1 showed reviewers an empty queue).
        ("WEBHOOK_TIMEOUT_SECONDS", "-5", "WEBHOOK_TIMEOUT_SECONDS"),
        ("APPROVALS_QUEUE_PAGE_SIZE", "-1", "APPROVALS_QUEUE_PAGE_SIZE"),
        ("API_MAX_BODY_BYTES", "0", "API_MAX_BODY_BYTES"),
        ("DB_POOL_MAX_SIZE", "0", "DATABASES"),
        ("EXECUTOR_AUTO_RERUNS", "-1", "EXECUTOR_AUTO_RERUNS"),
        ("WEBHOOK_RETRY_BASE_SECONDS", "nan", "WEBHOOK_RETRY_BASE_SECONDS"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "-1", "WEBHOOK_RETRY_MAX_SECONDS"),
        ("MCP_CALL_WAIT_SECONDS", "ten", "MCP_CALL_WAIT_SECONDS"),
        # At 0, as docs/operations.md says no limit or interval may be: every MCP session
        # was over at its next request, every wait refused (tasks/result too_many_waits
        # always), and no sign-in recent enough for a destructive approval.
        ("MCP_SESSION_IDLE_SECONDS", "0", "MCP_SESSION_IDLE_SECONDS"),
        ("MAX_WAITS_PER_AGENT", "0", "MAX_WAITS_PER_AGENT"),
        ("MCP_MAX_WAITS_PER_AGENT", "0", "MAX_WAITS_PER_AGENT"),
        ("MCP_THREADS", "0", "MCP_THREADS"),
        ("APPROVALS_REAUTH_WINDOW_SECONDS", "0", "APPROVALS_REAUTH_WINDOW_SECONDS"),
        # At 0 an approved call's task expired as it was sent: no call ever ran.
        ("EXECUTOR_RESEND_AFTER_SECONDS", "0", "EXECUTOR_RESEND_AFTER_SECONDS"),
        # At 0 each beat sent one more copy of every delivery whose task was still queued.
        ("WEBHOOK_RESEND_AFTER_SECONDS", "0", "WEBHOOK_RESEND_AFTER_SECONDS"),
        # At 0 the hourly sweep deleted every agent session: each run's rounds began again.
        ("AGENT_SESSION_RETENTION_SECONDS", "0", "AGENT_SESSION_RETENTION_SECONDS"),
        # Past a century ("forever"), the date the retention sweep reckons back to is out of
        # range: every run raised, and deleted no session or delivery.
        ("WEBHOOK_RETENTION_SECONDS", "100000000000", "WEBHOOK_RETENTION_SECONDS"),
        ("AGENT_SESSION_RETENTION_SECONDS", "100000000000", "AGENT_SESSION_RETENTION_SECONDS"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "1e15", "WEBHOOK_RETRY_MAX_SECONDS"),
        # A delivery counts its attempts in a small integer: attempt 32768 was never made.
        ("WEBHOOK_MAX_ATTEMPTS", "40000", "WEBHOOK_MAX_ATTEMPTS"),
    ],
)
def test_a_number_out_of_its_range_stops_the_start(
    tmp_path: Path, name: str, value: str, setting: str
) -> None:
    run = services(tmp_path, READ.format(name=setting), **{name: value})
    assert run.returncode != 0, f"{name}={value!r} was read as {run.stdout.strip()}"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ") and name in last


def test_numbers_in_range_are_read(tmp_path: Path) -> None:
    script = (
        "from django.conf import settings\n"
        "print(settings.EXECUTOR_AUTO_RERUNS, settings.WEBHOOK_RETRY_BASE_SECONDS,"
        " settings.APPROVALS_QUEUE_PAGE_SIZE, settings.WEBHOOK_RETENTION_SECONDS,"
        " settings.WEBHOOK_MAX_ATTEMPTS)\n"
    )
    run = services(
        tmp_path, script, EXECUTOR_AUTO_RERUNS="0", WEBHOOK_RETRY_BASE_SECONDS="0.3",
        APPROVALS_QUEUE_PAGE_SIZE=" 25 ", WEBHOOK_RETENTION_SECONDS="0",
        WEBHOOK_MAX_ATTEMPTS="32767",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "0.3", "25", "0", "32767"]


HSTS_PROBE = (
    "import django; django.setup()\n"
    "from django.test import Client\n"
    "answer = Client().get('/login/', secure=True, headers={'host': 'localhost'})\n"
    "print(answer.headers.get('Strict-Transport-Security', 'none'))\n"
)


def test_https_only_cookies_come_with_hsts(tmp_path: Path) -> None:
    """Services mode sends its cookies over HTTPS only; browsers are told to keep to it."""
    run = services(tmp_path, HSTS_PROBE)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "max-age=31536000"


def test_no_hsts_where_cookies_go_over_http(tmp_path: Path) -> None:
    run = services(tmp_path, HSTS_PROBE, SECURE_COOKIES="0")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "none"


SET_UP = "import django; django.setup()\nprint('started')\n"


@pytest.mark.parametrize(
    "env",
    [
        # Read at each call's screening, these failed every submission with a 500.
        {"COUNTERSIGN_WORKING_HOURS": "8:00-19:00"},
        {"COUNTERSIGN_WORKING_HOURS": "08:00-19:00", "COUNTERSIGN_WORKING_ZONE": "Europe/Pariss"},
        {"COUNTERSIGN_WORKING_HOURS": "08:00-19:00", "COUNTERSIGN_WORKING_DAYS": "mon-fry"},
        # No time inside, every call was outside hours; with an offset, a 500 each.
        {"COUNTERSIGN_WORKING_HOURS": "09:00-09:00"},
        {"COUNTERSIGN_WORKING_HOURS": "08:00Z-19:00Z"},
    ],
)
def test_working_hours_that_do_not_parse_stop_the_start(
    tmp_path: Path, env: dict[str, str]
) -> None:
    run = services(tmp_path, SET_UP, **env)
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: COUNTERSIGN_WORKING_")


def test_working_hours_that_parse_start(tmp_path: Path) -> None:
    run = services(
        tmp_path, SET_UP, COUNTERSIGN_WORKING_HOURS="08:00-19:00",
        COUNTERSIGN_WORKING_DAYS="mon,wed-fri", COUNTERSIGN_WORKING_ZONE="Europe/Paris",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["started"]


def test_an_upstream_key_that_is_no_fernet_key_stops_the_start(tmp_path: Path) -> None:
    """Read when an upstream's headers are, it failed every request that sends them; the
    error at start names the setting and never quotes the key."""
    key = "not-a-fernet-key-but-a-secret-all-the-same"
    run = services(tmp_path, SET_UP, UPSTREAM_SECRETS_KEY=key)
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: UPSTREAM_SECRETS_KEY")
    assert key not in run.stderr


def test_log_levels_are_read_in_either_case(tmp_path: Path) -> None:
    script = SET_UP + "import logging; print(logging.getLevelName(logging.getLogger().level))\n"
    run = services(tmp_path, script, LOG_LEVEL="warning", DB_LOG_LEVEL="debug")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["started", "WARNING"]


MAILER = "from django.conf import settings\nprint(settings.MAILERS['default']['OPTIONS'])\n"


def test_mail_on_port_465_speaks_tls_from_the_first_byte(tmp_path: Path) -> None:
    """Without EMAIL_USE_SSL a mail server on port 465 was spoken to in plain text first,
    and every notification waited out the timeout."""
    run = services(
        tmp_path, MAILER, EMAIL_HOST="mail.example.com", EMAIL_PORT="465", EMAIL_USE_SSL="1"
    )
    assert run.returncode == 0, run.stderr
    assert "'use_ssl': True, 'use_tls': False" in run.stdout
    both = services(
        tmp_path, MAILER, EMAIL_HOST="mail.example.com", EMAIL_USE_SSL="1", EMAIL_USE_TLS="1"
    )
    assert both.returncode != 0
    assert "EMAIL_USE_SSL and EMAIL_USE_TLS cannot both be on" in both.stderr
    default = services(tmp_path, MAILER, EMAIL_HOST="mail.example.com")
    assert "'use_ssl': False, 'use_tls': True" in default.stdout


def test_time_limits_that_outlast_the_lease_stop_the_start(tmp_path: Path) -> None:
    """A handler still running past its lease loses its call to the sweep, and
    reconciliation may run the effect again beside it: the hard limit must come first."""
    run = services(
        tmp_path,
        SET_UP,
        EXECUTOR_LEASE_GRACE_SECONDS="20",
        EXECUTOR_SOFT_LIMIT_GRACE_SECONDS="5",
        EXECUTOR_HARD_LIMIT_GRACE_SECONDS="15",
    )
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert "must be below EXECUTOR_LEASE_GRACE_SECONDS (20)" in last
    fits = services(tmp_path, SET_UP, EXECUTOR_LEASE_GRACE_SECONDS="21")
    assert fits.returncode == 0, fits.stderr


SSO = {
    "OIDC_RP_CLIENT_ID": "countersign",
    "OIDC_RP_CLIENT_SECRET": "s",
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "https://idp.example.com/authorize",
    "OIDC_OP_TOKEN_ENDPOINT": "https://idp.example.com/token",
    "OIDC_OP_USER_ENDPOINT": "https://idp.example.com/userinfo",
    "OIDC_OP_JWKS_ENDPOINT": "https://idp.example.com/jwks",
    "OIDC_OP_ISSUER": "https://idp.example.com",
}


def test_single_sign_on_without_the_providers_issuer_stops_the_start(tmp_path: Path) -> None:
    """Unchecked, an ID token of any issuer whose keys the provider's JWKS endpoint serves
    (another tenant's, another realm's) signed its person in here."""
    without = {name: value for name, value in SSO.items() if name != "OIDC_OP_ISSUER"}
    run = services(tmp_path, SET_UP, **without)
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert "OIDC_OP_ISSUER" in last
    with_it = services(tmp_path, SET_UP, **SSO)
    assert with_it.returncode == 0, with_it.stderr


@pytest.mark.parametrize(
    "name",
    [
        # In plain text the client secret and the codes (token), the claims (user info) and
        # the keys that sign ID tokens (anyone on the way could sign in as anyone) could be
        # read or swapped on the way: as an identity provider's JWKS URL, https only.
        "OIDC_OP_TOKEN_ENDPOINT",
        "OIDC_OP_JWKS_ENDPOINT",
        "OIDC_OP_USER_ENDPOINT",
        "OIDC_OP_AUTHORIZATION_ENDPOINT",
    ],
)
def test_a_single_sign_on_endpoint_in_plain_http_stops_the_start(tmp_path: Path, name: str) -> None:
    plain = SSO[name].replace("https://", "http://")
    run = services(tmp_path, SET_UP, **{**SSO, name: plain})
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ") and name in last


def test_single_sign_on_endpoints_over_https_or_on_this_machine_start(tmp_path: Path) -> None:
    local = {
        "OIDC_OP_TOKEN_ENDPOINT": "http://127.0.0.1:9000/token",
        "OIDC_OP_JWKS_ENDPOINT": "http://localhost:9000/jwks",
        "OIDC_OP_USER_ENDPOINT": "http://[::1]:9000/userinfo",
    }
    run = services(tmp_path, SET_UP, **{**SSO, **local})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "started"


@pytest.mark.parametrize(
    ("env", "read"),
    [
        ({}, "20"),
        # Its name when it counted MCP's waits alone, still read for deployments that set it.
        ({"MCP_MAX_WAITS_PER_AGENT": "7"}, "7"),
        ({"MAX_WAITS_PER_AGENT": "5", "MCP_MAX_WAITS_PER_AGENT": "7"}, "5"),
    ],
)
def test_the_waits_per_agent_are_read_under_their_old_name_too(
    tmp_path: Path, env: dict[str, str], read: str
) -> None:
    cleared = {"MAX_WAITS_PER_AGENT": "", "MCP_MAX_WAITS_PER_AGENT": "", **env}
    run = services(tmp_path, READ.format(name="MAX_WAITS_PER_AGENT"), **cleared)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [read]


@pytest.mark.parametrize(("name", "value"), [("LOG_LEVEL", "verbose"), ("DB_LOG_LEVEL", "trace")])
def test_a_log_level_that_is_no_level_stops_the_start_naming_it(
    tmp_path: Path, name: str, value: str
) -> None:
    """logging.config refused it with "Unable to configure root logger", which names
    neither the setting nor the levels it takes."""
    run = services(tmp_path, SET_UP, **{name: value})
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert f"{name}={value!r}" in last and "WARNING" in last


def test_an_edit_mode_that_is_no_mode_stops_the_start(tmp_path: Path) -> None:
    """APPROVALS_DESTRUCTIVE_EDITS=Narrow was read as never, with nothing to say so."""
    run = services(tmp_path, SET_UP, APPROVALS_DESTRUCTIVE_EDITS="Narrow")
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert "APPROVALS_DESTRUCTIVE_EDITS='Narrow'" in last
    narrow = services(tmp_path, READ.format(name="APPROVALS_DESTRUCTIVE_EDITS"),
                      APPROVALS_DESTRUCTIVE_EDITS="narrow")  # fmt: skip
    assert narrow.returncode == 0, narrow.stderr
    assert narrow.stdout.split() == ["narrow"]


@pytest.mark.parametrize(
    "password",
    [
        # openssl rand -base64 makes passwords with / and +; a # or ? ends the URL's address.
        "Zm9v/YmFy+cXV4=",
        "pass#word",
        "what?now",
    ],
)
def test_a_database_url_that_does_not_parse_stops_the_start_naming_it(
    tmp_path: Path, password: str
) -> None:
    """dj_database_url's ParseError named neither the setting nor the fix; the message
    never quotes the URL, which holds the password."""
    url = f"postgres://countersign:{password}@db.example.com:5432/countersign"
    run = services(tmp_path, SET_UP, DATABASE_URL=url)
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: DATABASE_URL")
    assert "percent-encode" in last and "PGPASSWORD" in last
    assert password not in run.stderr


@pytest.mark.parametrize(
    "url", ["mysql://countersign:secret@db/countersign", "sqlite:////tmp/x.db", "db:5432"]
)
def test_a_database_url_that_is_not_postgresql_stops_the_start(tmp_path: Path, url: str) -> None:
    """Services mode runs on PostgreSQL only (its locks, triggers and functions): MySQL
    failed on a driver, SQLite on the pool's options, deep in Django."""
    run = services(tmp_path, SET_UP, DATABASE_URL=url)
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: DATABASE_URL")
    assert "postgres://" in last and "secret" not in run.stderr


def test_a_password_with_any_character_reaches_postgresql_through_pgpassword(
    tmp_path: Path,
) -> None:
    """A URL without a password leaves it to libpq's PGPASSWORD, read as is (nothing to
    encode): how docker-compose.yml passes POSTGRES_PASSWORD."""
    script = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as cursor: cursor.execute('SELECT 1')\n"
        "print(connection.connection.info.password)\n"
    )
    run = services(tmp_path, script, PGPASSWORD="Zm9v/YmFy+cXV4=#?@%")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["Zm9v/YmFy+cXV4=#?@%"]


@pytest.mark.parametrize(
    "url",
    [
        # Read at their first use, each failed every use of the cache, the broker and the
        # rate limits, and showed only on /healthz ("down: ValueError"), never at start.
        "localhost:6379",
        "http://redis.example.com:6379/0",
        "redis://:s3cret@redis.example.com:63790x/0",
        "redis://:s3cret@redis.example.com:6379/zero",
    ],
)
def test_a_redis_url_that_cannot_be_used_stops_the_start_naming_it(
    tmp_path: Path, url: str
) -> None:
    run = services(tmp_path, SET_UP, REDIS_URL=url)
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: REDIS_URL")
    assert "s3cret" not in run.stderr


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/12", "rediss://:p%40ss@redis.example.com/0", "redis://redis"]
)
def test_redis_urls_that_can_be_used_start(tmp_path: Path, url: str) -> None:
    run = services(tmp_path, SET_UP, REDIS_URL=url)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    "team_map",
    [
        # Each left tool-admins out of the teams the provider manages: someone taken out of
        # cs-admins at the provider stayed a tool admin here, sign-in after sign-in.
        "cs-reviewers=reviewers,cs-admins:tool-admins",
        "cs-admins=",
        "cs-admins=tool-admins,cs-admins=reviewers",
    ],
)
def test_a_team_map_that_does_not_read_stops_the_start(tmp_path: Path, team_map: str) -> None:
    run = services(tmp_path, SET_UP, **{**SSO, "OIDC_TEAM_MAP": team_map})
    assert run.returncode != 0, "started"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: OIDC_TEAM_MAP")


def test_a_team_map_is_read_without_the_spaces_around_its_names(tmp_path: Path) -> None:
    """Spaces were kept: "cs-admins = tool-admins" mapped to a team " tool-admins" nobody
    has, and the real one was never set from the claim."""
    run = services(
        tmp_path, READ.format(name="OIDC_TEAM_MAP"),
        **{**SSO, "OIDC_TEAM_MAP": "cs-admins = tool-admins, cs-reviewers=reviewers"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "{'cs-admins': 'tool-admins', 'cs-reviewers': 'reviewers'}"


def test_the_debug_page_never_shows_the_passwords_of_the_service_urls(tmp_path: Path) -> None:
    """With DEBUG=1, a request under a host name not allowed (anyone may send one) is
    answered with Django's debug page, settings included: DATABASE_URL, REDIS_URL,
    CELERY_BROKER_URL and the cache's LOCATION were shown whole, passwords and all (Django
    hides settings by name only: PASSWORD, KEY, TOKEN...)."""
    script = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "page = Client().get('/login/', headers={'host': 'elsewhere.example'})\n"
        "print(page.status_code)\n"
        "print(page.content.decode())\n"
    )
    run = services(
        tmp_path, script, DEBUG="1",
        DATABASE_URL="postgres://countersign:pg-pass-7f3a@127.0.0.1:5432/countersign",
        REDIS_URL="redis://:redis-pass-9c2e@127.0.0.1:6379/12",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    status, page = run.stdout.split("\n", 1)
    assert status == "400"
    assert "DATABASE_URL" in page and "CELERY_BROKER_URL" in page, "no settings on the page"
    assert "pg-pass-7f3a" not in page and "redis-pass-9c2e" not in page
    # The rest of each URL stays, to tell which service it names.
    assert "postgres://countersign:********************@127.0.0.1:5432/countersign" in page
    assert "redis://:********************@127.0.0.1:6379/12" in page
