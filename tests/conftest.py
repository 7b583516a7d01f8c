"""Shared fixtures. Tests run against real PostgreSQL and Redis; they never skip for a
missing service, they stop the run and say which one is missing."""

from __future__ import annotations

import copy
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pgtrigger
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.cache import caches
from django.core.management import call_command
from django.db import transaction
from django.test import Client, TransactionTestCase

from audit.models import AuditEvent
from gateway import coordination
from tests.support import ROOT, emptying
from tests.support.browser import browser, page  # noqa: F401  (the browser tests' fixtures)
from tests.support.identity_provider import ProviderFactory, jwks_server
from tests.support.upstreams import control, running_upstream
from tools_registry import registry
from tools_registry import services as registry_services
from tools_registry.models import Agent, Tool

# The Python client, importable from its source tree (clients/python) by every test.
CLIENT_DIR = ROOT / "clients" / "python"
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="Run the chaos scenarios at soak size (hundreds of calls each); CI does not.",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if settings.EMBEDDED:
        raise pytest.UsageError(
            "The tests run against PostgreSQL: set DATABASE_URL (make test sets "
            "postgres://postgres@127.0.0.1:5432/countersign) and REDIS_URL."
        )
    if not settings.REDIS_URL:
        raise pytest.UsageError(
            "The tests need Redis: set REDIS_URL (make test sets redis://127.0.0.1:6379/0)."
        )
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise pytest.UsageError(
            f"Redis is not reachable at {settings.REDIS_URL}: {exc}. Start it with "
            "redis-server --daemonize yes --port 6379 --save '' --appendonly no"
        ) from exc
    # Hashing demo passwords with PBKDF2 would dominate the run; tests need no slow hash.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Each test process its own cache keys: the processes of one run share a Redis
    # database, and a page one of them kept (the analytics charts, for a minute) was read
    # by a test of another.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"countersign-tests-{worker}"},
    }
    caches.__dict__.pop("settings", None)  # read again from the settings above
    caches.close_all()


# Files of a few long tests each (real servers and worker processes, `make run`, fuzzing),
# longest first: the run starts them first. xdist otherwise orders files by their number of
# tests, so these came last, and one process ran them for minutes after the other had
# finished. (`make test` passes --no-loadscope-reorder: xdist keeps this order.)
LONG_FILES = (
    "tests/approvals/execution/test_chaos.py",
    "tests/config/test_embedded_mode.py",
    "tests/gateway/test_api_contract.py",
    "tests/approvals/execution/test_upstream_calls.py",
    "tests/audit/test_concurrent_writers.py",
    "tests/clients/test_examples.py",
    "tests/approvals/execution/test_state_machine.py",
    "tests/gateway/mcp/test_agent_frameworks.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    files = Counter(item.nodeid.partition("::")[0] for item in items)

    def order(item: pytest.Item) -> tuple[int, int, str]:
        path = item.nodeid.partition("::")[0]
        rank = LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)
        return rank, -files[path], path

    items.sort(key=order)  # stable: each file's tests keep their order


# After a test whose rows were committed, its rows are deleted (``tests.support.emptying``,
# a few milliseconds) where Django's flush would TRUNCATE every table (0.3 s). Where the
# flush must do it, note that the audit table refuses TRUNCATE: the test runner's flush is
# the one legitimate caller, so it alone runs with that trigger ignored.
_original_teardown = TransactionTestCase._fixture_teardown


def _fixture_teardown(self: TransactionTestCase) -> None:
    aliases = self._databases_names(include_mirrors=False)
    ordinary = self.available_apps is None and not self.serialized_rollback
    if ordinary and all(emptying.empty(alias) for alias in aliases):
        return
    with pgtrigger.ignore("audit.AuditEvent:append_only_truncate"):
        _original_teardown(self)
    for alias in aliases:
        emptying.after_flush(alias)


TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[method-assign]


@dataclass
class World:
    """The cast: alice owns the agent, bob reviews every demo tool, charlie is an outsider."""

    alice: User
    bob: User
    charlie: User
    agent: Agent
    token: str
    tools: dict[str, Tool]

    def api(self) -> ApiClient:
        return ApiClient(self.token)


class ApiClient:
    """The agent's side of the API, through Django's test client."""

    def __init__(self, token: str):
        self.client = Client()
        self.token = token

    def submit(self, body: dict[str, Any], *, key: str | None = "auto", **headers: str) -> Any:
        extra = {"HTTP_AUTHORIZATION": f"Bearer {self.token}", **headers}
        if key == "auto":
            import uuid

            key = str(uuid.uuid4())
        if key is not None:
            extra["HTTP_IDEMPOTENCY_KEY"] = key
        return self.client.post(
            "/api/v1/tool-calls", data=json.dumps(body), content_type="application/json", **extra
        )

    def get(self, path: str) -> Any:
        return self.client.get(path, HTTP_AUTHORIZATION=f"Bearer {self.token}")


def build_world() -> World:
    from sandbox.demo import seed_sandbox

    registry_services.sync_tools()
    seed_sandbox()
    alice = User.objects.create_user("alice", "alice@example.com", "pw-alice")
    bob = User.objects.create_user("bob", "bob@example.com", "pw-bob")
    charlie = User.objects.create_user("charlie", "charlie@example.com", "pw-charlie")
    tools = {tool.name: tool for tool in Tool.objects.all()}
    for tool in tools.values():
        registry_services.grant_review(tool=tool, user=bob)
    agent = Agent.objects.create(name="support-bot", owner=alice)
    agent.allowed_tools.add(*tools.values())
    _, token = registry_services.issue_token(agent=agent, label="tests")
    Group.objects.get_or_create(name="reviewers")
    return World(alice=alice, bob=bob, charlie=charlie, agent=agent, token=token, tools=tools)


@pytest.fixture
def world(request: pytest.FixtureRequest, db: None) -> World:
    """The cast, built for the test; or, in a module that uses ``module_world``, a copy of
    the module's (its rows are the same: each test's changes are rolled back)."""
    if "module_world" in request.fixturenames:
        return copy.deepcopy(request.getfixturevalue("module_world"))
    return build_world()


# Fixtures of a test that commit: a module that shares one world can have none of them.
COMMITTING = {"transactional_db", "live_world", "live_server", "django_db_reset_sequences"}


@pytest.fixture(scope="module")
def module_world(
    request: pytest.FixtureRequest, django_db_setup: None, django_db_blocker: Any
) -> Iterator[World]:
    """One cast for all of a module's tests, as Django's ``setUpTestData``: built once, in a
    transaction that each test's own (a savepoint) nests in, and rolled back after the last.
    Building it takes about 150 statements; the transitions module alone builds it 466 times.

    A module asks for it with ``pytest.mark.usefixtures("module_world")`` (module-scoped, it
    is then set up before each test's transaction). Only for modules whose tests all roll
    back: a committing test inside this transaction would commit nothing its worker
    processes could see."""
    committing = [
        item.nodeid
        for item in request.session.items
        if item.path == request.path
        and (
            COMMITTING & set(getattr(item, "fixturenames", ()))
            or any(mark.kwargs.get("transaction") for mark in item.iter_markers("django_db"))
        )
    ]
    if committing:
        pytest.fail(
            f"module_world is for modules whose tests roll back; these commit: {committing}"
        )
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic._from_testcase = True  # type: ignore[attr-defined]  # as TestCase's: durable blocks nest
        atomic.__enter__()
        shared = build_world()
    yield shared
    with django_db_blocker.unblock():
        transaction.set_rollback(True)
        atomic.__exit__(None, None, None)


@pytest.fixture
def live_world(transactional_db: None) -> World:
    """The same cast, committed, for tests whose worker processes must see it."""
    return build_world()


def executions_sent(callbacks: list[Any]) -> list[Any]:
    """The call ids that captured on-commit callbacks send to the executor (other callbacks,
    such as long-poll wake-ups and webhooks, are left out)."""
    from approvals.execution import send

    return [cb.args[0] for cb in callbacks if getattr(cb, "func", None) is send.send_execution]


def sandbox_effects() -> list[dict[str, Any]]:
    """The oracle: every effect the sandbox applied, from `manage.py sandbox_effects`."""
    from io import StringIO

    out = StringIO()
    call_command("sandbox_effects", stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.fixture
def reviewer_client(world: World) -> Iterator[Client]:
    client = Client()
    client.force_login(world.bob)
    yield client


def events(action: str, **filters: Any) -> list[AuditEvent]:
    """The audit events of one action (narrowed by ``filters``), oldest first."""
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))


def clear_shared_state() -> None:
    """Forget every rate-limit window and breaker of this run's Redis database.

    Only Countersign's own key families are touched (never FLUSHDB: the database may be
    shared with the cache and the broker of this test run).
    """
    client = coordination.redis_client()
    for pattern in (coordination.key("limits") + "*", coordination.key("breaker") + ":*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture(autouse=True)
def clean_shared_state() -> Iterator[None]:
    """No rate-limit window or breaker in Redis before any test, nor after it: a sweep that
    takes over calls tells their tools' breakers, and a breaker one test opened would refuse
    another test's calls in the same process."""
    clear_shared_state()
    yield
    clear_shared_state()


@pytest.fixture
def probe_tool_cleanup() -> Iterator[None]:
    """Unregisters the test tool (``tests.support.probe``) from the code registry after the test."""
    yield
    registry.unregister("check_stock")


@pytest.fixture(scope="module")
def http_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real HTTP API with an OpenAPI document, in its own process (tests.support.upstreams);
    back to its first document and no fault after each test."""
    with running_upstream("http_api", tmp_path_factory.mktemp("http-upstream")) as web:
        yield web


@pytest.fixture(scope="module")
def mcp_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real MCP server, in its own process (tests.support.upstreams)."""
    with running_upstream("mcp_server", tmp_path_factory.mktemp("mcp-upstream")) as web:
        yield web


@pytest.fixture(autouse=True)
def _upstreams_as_new(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "http_upstream" in request.fixturenames:
        control(request.getfixturevalue("http_upstream"), document="v1", fault="none", reset=True)
    if "mcp_upstream" in request.fixturenames:
        control(request.getfixturevalue("mcp_upstream"), seconds_after_effect=0, reset=True)


@pytest.fixture(scope="session")
def jwks_http() -> Iterator[Any]:
    """The identity providers' JWKS web server (``tests.support.identity_provider``)."""
    with jwks_server() as server:
        yield server


@pytest.fixture
def identity_providers(jwks_http: Any, db: None) -> Any:
    """Makes identity providers: keys generated here, their JWKS served over HTTP, their
    IdentityProvider rows; each with a key set of its own (nothing cached between tests)."""
    return ProviderFactory(server=jwks_http)
