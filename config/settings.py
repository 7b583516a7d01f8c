"""Countersign settings: one module, driven by the environment.

Two modes:

* embedded (no ``DATABASE_URL``): SQLite under ``var/``, Celery eager (the executor runs
  in-process after commit), local-memory cache. Nothing to install; ``make run`` uses it.
* services (``DATABASE_URL=postgres://...``): PostgreSQL through a psycopg pool, Redis as
  cache and Celery broker (``REDIS_URL``), real ``celery worker`` and ``celery beat``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from core.hosts import https_or_here
from core.postgresql.pool import check_connection

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


# A value these helpers cannot read stops the start, naming the setting: read as its
# default or as off, a typo (SECURE_COOKIES=ture, a negative timeout) would turn a
# protection off or break the first request that uses it, long after the deploy.
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ImproperlyConfigured(
            f"{name}={raw.strip()!r} is not a boolean: use 1 or 0, true or false, yes or no, "
            "on or off."
        )
    return value in _TRUE


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw.strip()!r} is not a whole number.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} is at least {minimum}, not {value}.")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} is at most {maximum}, not {value}.")
    return value


def env_float(name: str, default: float, *, minimum: float = 0, maximum: float = math.inf) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw.strip()!r} is not a number.") from None
    if not math.isfinite(value) or value < minimum:
        raise ImproperlyConfigured(f"{name} is a number of at least {minimum}, not {value}.")
    if value > maximum:
        raise ImproperlyConfigured(f"{name} is at most {maximum:g}, not {value:g}.")
    return value


# The longest a retention or a wait may be set to (seconds). Past it, a date reckoned back
# from now goes out of range: WEBHOOK_RETENTION_SECONDS=100000000000 (meant as "forever")
# raised OverflowError in every run of gateway.sessions_sweep, which then deleted no MCP
# session, agent session or webhook delivery either.
A_CENTURY = 100 * 365 * 24 * 3600


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def env_log_level(name: str) -> str:
    # logging.config refuses an unknown level with "Unable to configure root logger",
    # naming neither the setting nor the levels it takes.
    levels = logging.getLevelNamesMapping()
    value = env_str(name, "INFO").upper() or "INFO"
    if value not in levels:
        raise ImproperlyConfigured(
            f"{name}={env_str(name)!r} is not a log level: use one of {', '.join(levels)}."
        )
    return value


def database_url_settings(url: str) -> dict[str, Any]:
    """DATABASE_URL read as Django's database settings; one that cannot be read stops the
    start naming it, never quoting it (it holds the password)."""
    try:
        parsed = dj_database_url.parse(url, conn_max_age=0, conn_health_checks=False)
    except dj_database_url.UnknownSchemeError:
        parsed = {"ENGINE": ""}
    except (dj_database_url.ParseError, ValueError):
        # A password with / # ? (openssl rand -base64 makes them) ends the URL's address.
        raise ImproperlyConfigured(
            "DATABASE_URL is not a URL that can be read: percent-encode the characters of its "
            "user and password other than letters, digits and - . _ ~ (urllib.parse.quote), "
            "or leave the password out of it and set PGPASSWORD."
        ) from None
    # Services mode's locks, triggers and database functions are PostgreSQL's.
    if parsed["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            "DATABASE_URL names no PostgreSQL database: services mode runs on PostgreSQL "
            "only (postgres://user:password@host:5432/name); unset it for the embedded mode."
        )
    return dict(parsed)


def redis_url(name: str) -> str:
    """A Redis URL the cache, Celery's broker and the rate limits can all use (redis:// or
    rediss://), or "": read at its first use, a typo failed every use of each and showed only
    on /healthz. The message never quotes it (it may hold the password)."""
    value = env_str(name)
    if not value:
        return value
    problem = ""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a port that is no number)
    except ValueError:
        problem = "it is not a URL that can be read (percent-encode its password)"
    else:
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            problem = "give redis://[:password@]host[:port][/db], or rediss:// for TLS"
        elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
            problem = "its path is a database number (/0); percent-encode a / # ? of its password"
    if problem:
        raise ImproperlyConfigured(f"{name} cannot be used: {problem}.")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def team_map(name: str) -> dict[str, str]:
    """``idp-value=team,...``. A pair that does not read stops the start: left out, its team
    was no longer set from the claim, and whoever the provider took out of it stayed in."""
    mapping: dict[str, str] = {}
    for pair in env_list(name, ""):
        value, _, team = (part.strip() for part in pair.partition("="))
        if not value or not team:
            raise ImproperlyConfigured(f"{name}: {pair!r} is not idp-value=team.")
        if value in mapping:
            raise ImproperlyConfigured(f"{name} maps {value!r} twice: one team per value.")
        mapping[value] = team
    return mapping


def provider_endpoint(name: str) -> str:
    """A single sign-on endpoint: https, or http on this machine only, as an identity
    provider's JWKS URL (tools_registry.models.keys_over_tls). In plain text the client
    secret, the codes, the claims and the keys that sign ID tokens could be read or swapped
    on the way, and whoever is there sign in as anyone."""
    value = env_str(name)
    if value and not https_or_here(value):
        raise ImproperlyConfigured(
            f"{name}={value!r}: the provider is reached over https (http only on this machine)."
        )
    return value


VAR_DIR = Path(env_str("COUNTERSIGN_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = redis_url("REDIS_URL")
EMBEDDED = not DATABASE_URL
TESTING = "pytest" in sys.modules or (len(sys.argv) > 1 and sys.argv[1] == "test")

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    """Production sets SECRET_KEY; the embedded mode keeps a generated one under var/."""
    if key := env_str("SECRET_KEY"):
        return key
    if not EMBEDDED and not TESTING and not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DATABASE_URL is set (services mode).")
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
# Where agents and webhooks reach this deployment; used for absolute status URLs.
_PORT = env_int("PORT", 8000, minimum=1)
PUBLIC_URL = env_str("PUBLIC_URL", f"http://127.0.0.1:{_PORT}").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "guardian",
    # Sign-in: throttling and lockout (axes), the second factor (django-otp's TOTP devices)
    # and single sign-on with OpenID Connect (mozilla-django-oidc); see accounts/.
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "mozilla_django_oidc",
    "pgtrigger",
    # Serves the API docs' Swagger UI from static files: the CSP forbids a CDN.
    "ninja",
    "audit",
    "tools_registry",
    "accounts",
    "approvals",
    "gateway",
]
# The simulated mail, CRM and payments systems and the demo tools that act on them: on in the
# embedded mode and in the tests, off in production unless asked for (SANDBOX_ENABLED=1).
SANDBOX_ENABLED = env_bool("SANDBOX_ENABLED", EMBEDDED or TESTING)
if SANDBOX_ENABLED:
    INSTALLED_APPS.append("sandbox")

MIDDLEWARE = [
    # Outermost: under /api/ it turns every error answer of the layers below into JSON.
    "gateway.http.ApiJsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "core.middleware.AdminRefusesNulMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Signs out a session past its age or idle too long, before anything else reads it.
    "accounts.middleware.SessionLimitsMiddleware",
    # request.user.is_verified(): whether this session passed the second factor.
    "django_otp.middleware.OTPMiddleware",
    "accounts.middleware.SecondFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as axes asks: turns a refused sign-in of a locked-out account or address into
    # the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "config.context_processors.navigation",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------

if EMBEDDED:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "countersign.sqlite3",
            "OPTIONS": {
                # IMMEDIATE takes the write lock at BEGIN, so two writers queue instead of
                # failing with "database is locked" halfway through a transaction.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
else:
    _db = database_url_settings(DATABASE_URL)
    # Django's, plus statements held back until the next one or the COMMIT (core.db.later).
    _db["ENGINE"] = "core.postgresql"
    # The URL's own options (?sslmode=verify-full, ...) stay; ours are added to them.
    _db["OPTIONS"] = {
        **_db.get("OPTIONS", {}),
        # Only core.db asks for prepared statements (the ORM's cursors never do).
        "prepare_threshold": 5 if env_bool("DB_PREPARED_STATEMENTS", True) else None,
    }
    if env_bool("DB_POOL", True):
        _pool_timeout = env_int("DB_POOL_TIMEOUT", 10, minimum=1)
        # min_size 0: Celery's prefork children drop the pool after each task, so an
        # eagerly filled pool would open connections nobody uses.
        _db["OPTIONS"]["pool"] = {
            "min_size": 0,
            "max_size": env_int("DB_POOL_MAX_SIZE", 10, minimum=1),
            "timeout": _pool_timeout,
            # Connections a PostgreSQL restart cut are dropped here, never lent to a request.
            "check": check_connection,
            # While PostgreSQL is away, the pool tries to connect again and again, waiting
            # twice as long each time (psycopg_pool's default gives up only after 5 min):
            # once back, requests still failed until its next try, a minute later after a
            # long outage. Given up after a request's own wait, the next request tries anew.
            "reconnect_timeout": _pool_timeout,
        }
    DATABASES = {"default": dict(_db)}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, Celery ----------------------------------------------------------------------

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "countersign",
            # A Redis that hangs answers as one that is down (the health check says so)
            # instead of holding the request.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# The executor is idempotent by the database's claim, so the broker may deliver twice:
# ack only after the task ran, and give the message back if the worker process dies.
# "memory://localhost/", not "memory://": kombu warns "No hostname was supplied" at every
# eagerly run task of the embedded mode otherwise.
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "countersign")
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # An unacknowledged message comes back after this long. Executor tasks are short; the
    # sweeps, not the broker, recover calls whose worker died.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1),
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes every database connection, and the psycopg pool, around each
# task in a prefork child: a new PostgreSQL connection per task. With the pool, close only
# every this many tasks; config.celery returns the connection to the pool after each one.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000) if env_bool("DB_POOL", True) else None
# Beat's record of the last runs goes under var/, not the working directory: the image's
# /app belongs to root and its processes do not (Dockerfile), so beat could not create it.
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# A periodic task that waited in the queue past its next run is dropped (expires), so a
# backlog (workers down for an hour) never piles up runs; the next one does the same work.
_AUDIT_VERIFY_EVERY = float(env_int("AUDIT_VERIFY_EVERY_SECONDS", 3600, minimum=1))
CELERY_BEAT_SCHEDULE = {
    "audit-seal-chain": {"task": "audit.seal_chain", "schedule": 2.0, "options": {"expires": 4}},
    # A full walk of the chain; the auditor's status panel shows the last outcome.
    "audit-verify-chain": {
        "task": "audit.verify_chain",
        "schedule": _AUDIT_VERIFY_EVERY,
        "options": {"expires": _AUDIT_VERIFY_EVERY},
    },
    "approvals-sweep": {"task": "approvals.sweep", "schedule": 5.0, "options": {"expires": 10}},
    "approvals-notify-reviewers": {
        "task": "approvals.notify_reviewers",
        "schedule": 15.0,
        "options": {"expires": 30},
    },
    "approvals-reconcile": {
        "task": "approvals.reconcile",
        "schedule": 5.0,
        "options": {"expires": 10},
    },
    "approvals-webhook-sweep": {
        "task": "approvals.webhook_sweep",
        "schedule": 5.0,
        "options": {"expires": 10},
    },
    # Idempotency-Key answers older than IDEMPOTENCY_KEY_TTL.
    "gateway-idempotency-sweep": {
        "task": "gateway.idempotency_sweep",
        "schedule": 600.0,
        "options": {"expires": 600},
    },
    # MCP sessions that are over, agent sessions idle past AGENT_SESSION_RETENTION_SECONDS,
    # webhook deliveries ended longer ago than WEBHOOK_RETENTION_SECONDS.
    "gateway-sessions-sweep": {
        "task": "gateway.sessions_sweep",
        "schedule": 3600.0,
        "options": {"expires": 3600},
    },
}

# --- Auth, sessions, security -----------------------------------------------------------

# Single sign-on with OpenID Connect, on when OIDC_RP_CLIENT_ID is set. The provider's
# endpoints are named one by one (no discovery at start-up: settings never go online).
OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID")
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
OIDC_RP_CLIENT_SECRET = env_str("OIDC_RP_CLIENT_SECRET")
OIDC_OP_AUTHORIZATION_ENDPOINT = provider_endpoint("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = provider_endpoint("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = provider_endpoint("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = provider_endpoint("OIDC_OP_JWKS_ENDPOINT")
# The provider's issuer (its discovery document's "issuer"): an ID token whose iss is not
# exactly it signs nobody in. Required with SSO: unchecked, an ID token of any issuer whose
# keys the JWKS endpoint serves (another tenant's, another realm's) signed its person in,
# and no discovery document is read to learn it (settings never go online).
OIDC_OP_ISSUER = env_str("OIDC_OP_ISSUER")
if OIDC_ENABLED and not OIDC_OP_ISSUER:
    raise ImproperlyConfigured(
        "OIDC_OP_ISSUER is required with single sign-on (OIDC_RP_CLIENT_ID): set it to the "
        "issuer of the provider's discovery document, exactly as written there."
    )
OIDC_RP_SIGN_ALGO = env_str("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email profile groups")
OIDC_USE_PKCE = env_bool("OIDC_USE_PKCE", True)
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on")
# Each request to the provider (token, user info, keys) gives up after this long: without
# it mozilla-django-oidc waits without end, holding a web thread the agents need too.
OIDC_TIMEOUT = env_int("OIDC_TIMEOUT_SECONDS", 10, minimum=1)
# The claim that names a person's teams at the provider, and which of its values mean which
# Countersign team ("idp-value=team,..."). Teams named here are set from the claim at every
# SSO sign-in (joined or left); other teams are managed in the admin only.
OIDC_TEAMS_CLAIM = env_str("OIDC_TEAMS_CLAIM", "groups")
OIDC_TEAM_MAP = team_map("OIDC_TEAM_MAP")
OIDC_USERNAME_CLAIM = env_str("OIDC_USERNAME_CLAIM", "preferred_username")
OIDC_AUTHENTICATE_CLASS = "accounts.oidc.SignInRequestView"
OIDC_CALLBACK_CLASS = "accounts.oidc.SignInCallbackView"
LOGIN_REDIRECT_URL_FAILURE = "/login/?sso=failed"

AUTHENTICATION_BACKENDS = [
    # First: refuses every sign-in of a locked-out account or client address.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
if OIDC_ENABLED:
    AUTHENTICATION_BACKENDS.append("accounts.oidc.TeamMappingOIDCBackend")

# Login throttling (django-axes): this many failed sign-ins in a row lock the account, and
# separately the client address, for the cool-off; every attempt while locked restarts it.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 20, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 30))
# ["username", "ip_address"], but a sign-in that names nobody (single sign-on) counts
# against its address only.
AXES_LOCKOUT_PARAMETERS = "accounts.lockout.lockout_parameters"
# A success forgets the failures under the name that signed in, not those from its address
# (accounts.lockout.LockoutHandler): signing in to one's own account never resets a lock
# being built against another's.
AXES_RESET_ON_SUCCESS = True
AXES_HANDLER = "accounts.lockout.LockoutHandler"
AXES_LOCKOUT_CALLABLE = "accounts.lockout.lockout_response"
# The client address is REMOTE_ADDR (as in the trail's sign-in events), never a header
# the client chose to send.
AXES_CLIENT_IP_CALLABLE = "accounts.lockout.client_address"
# Axes keeps each failed sign-in's form in its row (until the cool-off ends) and masks only
# "password" and these: the other pages whose password it counts (a change of one's own,
# the re-authentication) post the new password, the mistyped old one and the app's code.
AXES_SENSITIVE_PARAMETERS = [
    "username",  # axes' own two: its log lines name neither
    "ip_address",
    "old_password",
    "new_password1",
    "new_password2",
    "password1",
    "password2",
    "code",
    "csrfmiddlewaretoken",
]
# The trail already has every sign-in (auth.login, auth.login_failed, auth.locked_out).
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

# The second factor (TOTP). Required of reviewers and admins when on: by default in
# services mode, off in the embedded demo unless REQUIRE_2FA=1.
REQUIRE_2FA = env_bool("REQUIRE_2FA", not EMBEDDED and not TESTING)
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "Countersign")
# The admin never shows a person's TOTP secret (nor its QR code).
OTP_ADMIN_HIDE_SENSITIVE_DATA = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; nobody anonymous reviews.
GUARDIAN_RAISE_403 = True

# A reviewer's session ends this long after its sign-in (a working day and some), and after
# this long without a request from the person: the page's own polling (the queue, a call's
# page) is not one, or a tab left open would keep the session for ever (accounts.sessions).
SESSION_MAX_AGE_SECONDS = env_int("SESSION_MAX_AGE_SECONDS", 12 * 3600, minimum=1)
SESSION_IDLE_SECONDS = env_int("SESSION_IDLE_SECONDS", 30 * 60, minimum=1)
# Browsers keep the cookie, and clearsessions the row, no longer than that after its last
# change (the limits above, checked at each request, are what end a session).
SESSION_COOKIE_AGE = SESSION_MAX_AGE_SECONDS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not EMBEDDED and not TESTING)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_PROXY", False) else None
)
# Cookies sent over HTTPS only make a site that works over HTTPS only: browsers are told to
# keep to HTTPS (HSTS, sent on HTTPS answers), so a later visit typed or linked as http://
# is never answered by whoever sits on the network with a look-alike sign-in page.
SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 365 * 24 * 3600 if SESSION_COOKIE_SECURE else 0)

# The debug page and error reports hide the passwords inside the services' URLs too.
DEFAULT_EXCEPTION_REPORTER_FILTER = "core.debug.ReporterFilter"

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# --- Static files -----------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# whitenoise serves straight from the finders, so neither mode needs collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Reviewer notifications. Without EMAIL_HOST the messages go to the console (embedded mode).
# Port 465 speaks TLS from the first byte (EMAIL_USE_SSL); 587 starts plain and upgrades
# (EMAIL_USE_TLS, on by default unless EMAIL_USE_SSL is). Only one of them can be on.
_EMAIL_SSL = env_bool("EMAIL_USE_SSL", False)
_EMAIL_TLS = env_bool("EMAIL_USE_TLS", not _EMAIL_SSL)
if _EMAIL_SSL and _EMAIL_TLS:
    raise ImproperlyConfigured("EMAIL_USE_SSL and EMAIL_USE_TLS cannot both be on: choose one.")
if env_str("EMAIL_HOST"):
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": env_str("EMAIL_HOST"),
                "port": env_int("EMAIL_PORT", 587, minimum=1),
                "username": env_str("EMAIL_HOST_USER"),
                "password": env_str("EMAIL_HOST_PASSWORD"),
                "use_ssl": _EMAIL_SSL,
                "use_tls": _EMAIL_TLS,
                "timeout": 10,
            },
        }
    }
else:
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "countersign@localhost")

# --- Countersign ------------------------------------------------------------------------

# The sandbox payments API that the demo refund tool calls over HTTP.
SANDBOX_PAYMENTS_URL = env_str("SANDBOX_PAYMENTS_URL", f"{PUBLIC_URL}/sandbox/payments/v1")
# The bearer key the demo refund tool presents to the sandbox payments API (derived from
# SECRET_KEY unless set), so that nobody else can move its money.
SANDBOX_PAYMENTS_KEY = (
    env_str("SANDBOX_PAYMENTS_KEY")
    or hmac.new(SECRET_KEY.encode(), b"countersign-sandbox-payments", hashlib.sha256).hexdigest()
)
# Fault injection in the sandbox systems (sandbox.faults), for chaos tests and demos of
# failures. Off by default: the checkpoints then cost nothing. SANDBOX_FAULT_TAG names this
# process, so that a fault can target one worker.
SANDBOX_FAULTS = env_bool("SANDBOX_FAULTS", False)
SANDBOX_FAULT_TAG = env_str("SANDBOX_FAULT_TAG")
# Largest JSON body the agent API reads; bigger bodies get 413.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024, minimum=1)
# How long an Idempotency-Key's answer is kept for replays (seconds); swept afterwards.
IDEMPOTENCY_KEY_TTL = env_int("IDEMPOTENCY_KEY_TTL", 24 * 3600, maximum=A_CENTURY)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# The MCP endpoint (/mcp, gateway.mcp). A call that waits for a person, from a client that
# did not ask for a task, is answered after at most this long (pending, if still waiting).
MCP_CALL_WAIT_SECONDS = env_int("MCP_CALL_WAIT_SECONDS", 25)
# A tools/call without an idempotency key, sent again while the same call is open or
# ended (succeeded or rejected) this recently, is that call, not a new one.
MCP_RETRY_WINDOW_SECONDS = env_int("MCP_RETRY_WINDOW_SECONDS", 600)
# An MCP session unused this long is over; its client initializes a new one.
MCP_SESSION_IDLE_SECONDS = env_int(
    "MCP_SESSION_IDLE_SECONDS", 24 * 3600, minimum=1, maximum=A_CENTURY
)
# Sessions one agent keeps (a row each); past it, an initialize deletes its sessions used
# least recently. Generous: a framework may open one per end user's conversation.
MCP_MAX_SESSIONS_PER_AGENT = env_int("MCP_MAX_SESSIONS_PER_AGENT", 10_000, minimum=1)
# An agent session (the round counter of one run, REST or MCP) idle this long is deleted;
# a run that comes back after it counts its rounds from zero. A call refused for the
# session's rounds is a use: a run that keeps calling never gets its rounds back. Not 0,
# unlike other retentions: it kept no session past the hourly sweep, and so reset every
# run's rounds (max_rounds_per_session) each hour; a runaway loop was never stopped.
AGENT_SESSION_RETENTION_SECONDS = env_int(
    "AGENT_SESSION_RETENTION_SECONDS", 30 * 24 * 3600, minimum=1, maximum=A_CENTURY
)
# Requests of one agent that may wait for calls to end at once, REST long-polls and MCP
# waits (tasks/result, the wait of a tools/call, countersign_wait) counted together
# (gateway.waits): each holds a Redis connection, a long-poll a web thread besides. Past it
# a long-poll and tasks/result are refused (too_many_waits) and the others answer at once
# with the call as it stands. MCP_MAX_WAITS_PER_AGENT, its name when only MCP waits were
# counted, is still read when MAX_WAITS_PER_AGENT is not set.
MAX_WAITS_PER_AGENT = env_int(
    "MAX_WAITS_PER_AGENT", env_int("MCP_MAX_WAITS_PER_AGENT", 20, minimum=1), minimum=1
)
# Threads that serve Django's pages and the REST API in each web process (config.asgi).
WEB_THREADS = env_int("WEB_THREADS", 16, minimum=1)
# Threads that do the MCP endpoint's Django work in each web process (gateway.mcp.threads):
# checking tokens, listing tools, submitting calls and running reads (each for as long as
# its upstream takes, with a database connection). A request that waits for a decision
# holds none. 32 is the most asyncio's default executor, which did this before, ever had.
MCP_THREADS = env_int("MCP_THREADS", 32, minimum=1)
# Upstreams (tools_registry.upstreams): Fernet keys for their header values at rest,
# comma-separated, the first encrypting (default: derived from SECRET_KEY); the largest
# OpenAPI document and upstream answer read (a bigger answer is stored truncated).
UPSTREAM_SECRETS_KEY = env_str("UPSTREAM_SECRETS_KEY")
UPSTREAM_MAX_DOCUMENT_BYTES = env_int("UPSTREAM_MAX_DOCUMENT_BYTES", 5 * 1024 * 1024, minimum=1)
UPSTREAM_MAX_RESPONSE_BYTES = env_int("UPSTREAM_MAX_RESPONSE_BYTES", 256 * 1024, minimum=1)
# End users' tokens (tools_registry.user_tokens): an identity provider's signing keys
# (JWKS) are kept this long per process; fetched with this timeout; and fetched again (a
# key not in the set, or after a failed fetch) at most once per JWKS_MIN_REFRESH_SECONDS.
JWKS_CACHE_SECONDS = env_int("JWKS_CACHE_SECONDS", 300)
JWKS_TIMEOUT_SECONDS = env_int("JWKS_TIMEOUT_SECONDS", 5, minimum=1)
JWKS_MIN_REFRESH_SECONDS = env_int("JWKS_MIN_REFRESH_SECONDS", 5)
# Extra time past a tool's timeout before a silent worker's lease counts as expired.
EXECUTOR_LEASE_GRACE_SECONDS = env_int("EXECUTOR_LEASE_GRACE_SECONDS", 30)
# An approved call whose task has not started after this long is sent again (then after
# longer and longer: approvals.sweeps.resend_stalled_approved), each copy expiring unrun
# when the next may be sent. At 0 each task expired as it was sent, and no call ran.
EXECUTOR_RESEND_AFTER_SECONDS = env_int("EXECUTOR_RESEND_AFTER_SECONDS", 60, minimum=1)
# Reviewer UI. A destructive approval needs a sign-in (or a re-entered password) no older
# than this, on top of typing the tool's name.
APPROVALS_REAUTH_WINDOW_SECONDS = env_int("APPROVALS_REAUTH_WINDOW_SECONDS", 15 * 60, minimum=1)
# The queue's "expiring soon" filter: calls that expire within this many seconds.
APPROVALS_EXPIRING_SOON_SECONDS = env_int("APPROVALS_EXPIRING_SOON_SECONDS", 15 * 60)
APPROVALS_QUEUE_PAGE_SIZE = env_int("APPROVALS_QUEUE_PAGE_SIZE", 50, minimum=1)
# The queue page refreshes its rows this often (htmx polling of the table partial).
APPROVALS_QUEUE_POLL_SECONDS = env_int("APPROVALS_QUEUE_POLL_SECONDS", 5, minimum=1)
# Counts per risk class stop at this number ("1000+"): an exact count of a huge queue would
# make the page's time grow with the queue.
APPROVALS_QUEUE_COUNT_CAP = env_int("APPROVALS_QUEUE_COUNT_CAP", 1000, minimum=1)
# The detail page asks whether its call changed this often (htmx polling), so it never
# shows a decision someone else already made.
APPROVALS_DETAIL_POLL_SECONDS = env_int("APPROVALS_DETAIL_POLL_SECONDS", 3, minimum=1)
# Whether a reviewer may correct a destructive call's arguments before approving: "never",
# or "narrow" (only to remove or reduce what it acts on). Writes may always be corrected.
APPROVALS_DESTRUCTIVE_EDITS = env_choice(
    "APPROVALS_DESTRUCTIVE_EDITS", "never", ("never", "narrow")
)
# Standing approvals last at most this long.
APPROVALS_STANDING_MAX_SECONDS = env_int("APPROVALS_STANDING_MAX_SECONDS", 7 * 24 * 3600)
# Risk signals. Links to these domains (and their subdomains) are the organisation's own;
# a link anywhere else is an external link. Working hours, days and zone: a call outside
# them raises "outside_hours" (empty hours: never).
COUNTERSIGN_INTERNAL_DOMAINS = env_list(
    "COUNTERSIGN_INTERNAL_DOMAINS", "example.com" if EMBEDDED or TESTING else ""
)
COUNTERSIGN_WORKING_HOURS = env_str("COUNTERSIGN_WORKING_HOURS")  # e.g. 08:00-19:00
COUNTERSIGN_WORKING_DAYS = env_str("COUNTERSIGN_WORKING_DAYS", "mon-fri")
COUNTERSIGN_WORKING_ZONE = env_str("COUNTERSIGN_WORKING_ZONE", "UTC")
# Escalation to a tool's escalation group happens this long before expiry (at most half the
# call's time to live).
APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS = env_int(
    "APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS", 15 * 60
)
# Hard guard on a handler that ignores its timeout: Celery raises SoftTimeLimitExceeded in
# the task this long after the tool's time is up (the outcome is then unknown), and kills
# the worker child HARD seconds after that. SOFT + HARD must be below the lease grace, so a
# live worker is stopped before another may take its call over.
EXECUTOR_SOFT_LIMIT_GRACE_SECONDS = env_int("EXECUTOR_SOFT_LIMIT_GRACE_SECONDS", 5)
EXECUTOR_HARD_LIMIT_GRACE_SECONDS = env_int("EXECUTOR_HARD_LIMIT_GRACE_SECONDS", 10)
if (
    EXECUTOR_SOFT_LIMIT_GRACE_SECONDS + EXECUTOR_HARD_LIMIT_GRACE_SECONDS
    >= EXECUTOR_LEASE_GRACE_SECONDS
):
    # Otherwise a handler still running could lose its call to the lease sweep, and
    # reconciliation run the effect again beside it.
    raise ImproperlyConfigured(
        "EXECUTOR_SOFT_LIMIT_GRACE_SECONDS + EXECUTOR_HARD_LIMIT_GRACE_SECONDS "
        f"({EXECUTOR_SOFT_LIMIT_GRACE_SECONDS} + {EXECUTOR_HARD_LIMIT_GRACE_SECONDS}) must be "
        f"below EXECUTOR_LEASE_GRACE_SECONDS ({EXECUTOR_LEASE_GRACE_SECONDS}): a worker is "
        "stopped before its call's lease lapses."
    )
# Reconciliation runs a call again by itself (same key) at most this many times when the
# downstream says the effect did not happen; after that a person decides.
EXECUTOR_AUTO_RERUNS = env_int("EXECUTOR_AUTO_RERUNS", 2)
# The agent may ask for a failed write to run again (same key, same approval) at most this
# many times; past it the approval is spent, and an effect still wanted is a new call, which
# a person approves again. 0: a failed write is never retried on the agent's request.
EXECUTOR_AGENT_RETRIES = env_int("EXECUTOR_AGENT_RETRIES", 3)
# An escalated unknown call's downstream is asked again this often, in case it can now tell.
EXECUTOR_RECHECK_ESCALATED_SECONDS = env_int("EXECUTOR_RECHECK_ESCALATED_SECONDS", 300)
# Webhooks to agents (gateway.webhooks): per-attempt timeout, retries with exponential
# backoff from BASE up to MAX seconds between attempts, then give up. A delivery counts its
# attempts in a small integer: with a limit past 32767, the claim of attempt 32768 failed,
# and the delivery was neither sent nor given up, its task sent again without end.
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 12, minimum=1, maximum=32767)
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 5)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 3600, maximum=A_CENTURY)
# A task not run this long after it was sent is sent again (then after longer and longer:
# gateway.webhooks.sweep). At 0 every beat sent one more copy of each queued delivery.
WEBHOOK_RESEND_AFTER_SECONDS = env_int("WEBHOOK_RESEND_AFTER_SECONDS", 60, minimum=1)
# A delivery that ended (delivered, or given up) is deleted with its attempts this long after
# (seconds) by gateway.sessions_sweep: its body holds the call as GET returned it, result
# included. The trail keeps the call's own events. 0 deletes them at the sweep's next run.
WEBHOOK_RETENTION_SECONDS = env_int("WEBHOOK_RETENTION_SECONDS", 30 * 24 * 3600, maximum=A_CENTURY)
# Callback URLs on loopback/private networks are refused in services mode unless allowed.
# After a rotation, webhooks are signed with the old secret too for this long (seconds).
WEBHOOK_SECRET_GRACE_SECONDS = env_int("WEBHOOK_SECRET_GRACE_SECONDS", 24 * 3600)
WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", EMBEDDED)
# Append-only file outside the database that receives the audit chain head.
AUDIT_ANCHOR_PATH = Path(env_str("AUDIT_ANCHOR_PATH") or VAR_DIR / "audit-anchor.jsonl")
# Key of the fingerprints masked values keep ([masked:email:3f9a1c2b]); SECRET_KEY if unset.
AUDIT_MASK_KEY = env_str("AUDIT_MASK_KEY")

# Every log record is masked when it is made (audit.receivers.masking_record_factory,
# installed by the audit app), before any handler sees it: no per-handler filter needed.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
        }
    },
    # Upper case, as logging reads them: LOG_LEVEL=info stopped every process at start.
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL")},
    # DB_LOG_LEVEL=DEBUG (with DEBUG=1) logs every SQL statement, its string values left out
    # (audit.receivers).
    "loggers": {
        "django.db.backends": {"level": env_log_level("DB_LOG_LEVEL")},
        # axes logs every sign-in at INFO; the trail has them (auth.*), so only its warnings.
        "axes": {"level": "WARNING"},
        # httpx logs each request's URL at INFO: an upstream's carries the call's path and
        # query arguments, hidden fields' values among them, which the log's masking has no
        # detector for (and a webhook's, the agent's callback URL with its own tokens). What
        # was sent is in the trail, masked; the stored webhook attempts have the rest.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
