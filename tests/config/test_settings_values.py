"""The settings read from the environment, in services mode as an operator starts it: a value
they cannot read stops the start with the setting's name (never read as off or as its
default), and HTTPS-only cookies come with HSTS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def services(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a process of its own, whose settings are read from ``env`` on top
    of the test run's services (a process started outside pytest: not the tests' defaults)."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "COUNTERSIGN_VAR_DIR": str(tmp_path),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


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
        " settings.APPROVALS_QUEUE_PAGE_SIZE)\n"
    )
    run = services(
        tmp_path, script, EXECUTOR_AUTO_RERUNS="0", WEBHOOK_RETRY_BASE_SECONDS="0.3",
        APPROVALS_QUEUE_PAGE_SIZE=" 25 ",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "0.3", "25"]


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
}


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
