"""A token revoked while a submission made with it is under way, over the REST API, with
real threads against PostgreSQL: one authenticated before the revocation committed but not
yet in its transaction (held while its identity provider answers) creates no call and is
refused as the next request is; one already in its transaction is waited for by the
revocation, and its call stands; one (or a retry) that meets a revocation under way waits
for it and is refused. (The MCP door: ``tests/gateway/mcp/test_revocation_races``.)

Before, the door's check was the only one: the submission created its call after the
revocation, and a write made so could be approved and run, since a claim checks the agent,
never the token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, connections, transaction

from approvals.execution.claim import claim_call
from approvals.execution.finish import Outcome, finish_call
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from gateway.models import IdempotencyRecord
from tests.conftest import World, events
from tests.gateway.conftest import SEND_EMAIL
from tests.gateway.test_errors import error_of
from tests.support.identity_provider import Provider, ProviderFactory
from tests.support.workers import purge_queue
from tools_registry import services, user_tokens
from tools_registry.models import Agent, AgentToken, Tool
from tools_registry.sql import RUN_LOCK_CLASS, run_lock_key

pytestmark = pytest.mark.django_db(transaction=True)

SUPPORT_ONLY = {"support": {"risks": ["read", "write"]}}


@pytest.fixture(autouse=True)
def _no_cached_keys() -> Iterator[None]:
    user_tokens.forget_keys()
    yield
    user_tokens.forget_keys()


@pytest.fixture
def verifying(live_world: World, identity_providers: ProviderFactory) -> Provider:
    """The agent takes its users' roles from their tokens: a submission fetches the
    provider's keys between its authentication and its transaction."""
    provider = identity_providers()
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.VERIFIED
    agent.identity_provider = provider.row
    agent.role_scopes = SUPPORT_ONLY
    services.save_agent(agent=agent, changed_by=None)
    return provider


def _in_a_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _revoke(world: World) -> None:
    services.revoke_token(token=AgentToken.objects.get(agent=world.agent), revoked_by=world.alice)


def _waits_for_run_lock(agent_id: int, mode: str, *, granted: bool) -> bool:
    """Whether some transaction holds (``granted``) or awaits the agent's run lock in
    ``mode`` (ShareLock: a submission; ExclusiveLock: a stop, a resume, a revocation)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = %s AND objid = %s AND objsubid = 2 AND mode = %s AND granted = %s)",
            [RUN_LOCK_CLASS, run_lock_key(agent_id), mode, granted],
        )
        return bool(cursor.fetchone()[0])


def _until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("attempt", range(3))
def test_a_submission_authenticated_before_a_revocation_creates_no_call(
    live_world: World, verifying: Provider, attempt: int
) -> None:
    """The request's token was good at the door; while its user's token was verified (the
    provider slow to answer), the agent's token was revoked. Its transaction reads the token
    again after the agent's run lock: refused, 401 as the next request is, and audited."""
    user = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token("ada", ["support"])}
    with verifying.answering_late() as asked:
        submitter, answers = _in_a_thread(lambda: live_world.api().submit(SEND_EMAIL, **user))
        assert asked.wait(10), "the submission verifies its user's token"
        _revoke(live_world)  # nothing holds the run lock yet: it commits at once
    submitter.join(30)
    error_of(answers[0], 401, "not_authenticated")
    assert not ToolCall.objects.exists(), "no call, so nothing to approve and run"
    assert not IdempotencyRecord.objects.exists(), "the key is left unused"
    [refusal] = events("call.refused")
    assert (refusal.outcome, refusal.data["tool"]) == ("not_authenticated", "send_email")
    assert refusal.data["end_user"]["id"] == "ada"
    error_of(live_world.api().submit(SEND_EMAIL, **user), 401, "not_authenticated")


def test_a_key_seen_before_is_not_replayed_to_a_token_revoked_meanwhile(
    live_world: World,
) -> None:
    """A repeat of a key whose call exists: its first transaction finds the key taken and
    rolls back, and a second one reads the key alone. The revocation that waited for the
    first (held at the tool's row) commits before the second has the run lock: the second
    reads the token revoked, and the answer stored under the key is not handed to it."""
    first = live_world.api().submit(SEND_EMAIL, key="k-1")
    assert first.status_code == 202, first.content
    with transaction.atomic():
        Tool.objects.select_for_update().get(name="send_email")
        repeat, answers = _in_a_thread(lambda: live_world.api().submit(SEND_EMAIL, key="k-1"))
        _until(
            lambda: _waits_for_run_lock(live_world.agent.pk, "ShareLock", granted=True),
            "the repeat holds the agent's run lock",
        )
        revoker, _ = _in_a_thread(lambda: _revoke(live_world))
        _until(
            lambda: _waits_for_run_lock(live_world.agent.pk, "ExclusiveLock", granted=False),
            "the revocation waits for the repeat's first transaction",
        )
    repeat.join(30)
    revoker.join(30)
    error_of(answers[0], 401, "not_authenticated")
    assert ToolCall.objects.count() == 1


@pytest.mark.parametrize("attempt", range(3))
def test_a_revocation_waits_for_a_submission_in_flight(live_world: World, attempt: int) -> None:
    """A submission in its transaction (held at the tool's row, which a change of the tool
    holds) has the agent's run lock: the revocation waits for it to commit, then revokes.
    The call was made while the token was good, and stands; the next request is refused."""
    with transaction.atomic():
        Tool.objects.select_for_update().get(name="send_email")
        submitter, answers = _in_a_thread(lambda: live_world.api().submit(SEND_EMAIL))
        _until(
            lambda: _waits_for_run_lock(live_world.agent.pk, "ShareLock", granted=True),
            "the submission holds the agent's run lock",
        )
        revoker, _ = _in_a_thread(lambda: _revoke(live_world))
        _until(
            lambda: _waits_for_run_lock(live_world.agent.pk, "ExclusiveLock", granted=False),
            "the revocation waits for the submission in flight",
        )
        assert revoker.is_alive() and submitter.is_alive()
    submitter.join(30)
    revoker.join(30)
    assert answers[0].status_code == 202, answers[0].content
    call = ToolCall.objects.get()
    assert call.status == Status.PENDING
    token = AgentToken.objects.get(agent=live_world.agent)
    assert token.revoked_at is not None and call.created_at < token.revoked_at
    error_of(live_world.api().submit(SEND_EMAIL), 401, "not_authenticated")
    assert ToolCall.objects.count() == 1


@contextmanager
def revocation_under_way(world: World) -> Iterator[None]:
    """The agent's token revoked in a transaction of another thread, left open (the run lock
    held) for the block, committed at its end."""
    # Used first: the door writes a token's last use at most once a minute, and that write
    # would wait for the revocation's row lock instead of the run lock.
    assert world.api().get("/api/v1/tools").status_code == 200
    token = AgentToken.objects.get(agent=world.agent)
    revoked, release = threading.Event(), threading.Event()

    def revoke() -> None:
        with transaction.atomic():
            services.revoke_token(token=token, revoked_by=world.alice)
            revoked.set()
            release.wait(30)

    revoker, _ = _in_a_thread(revoke)
    try:
        assert revoked.wait(10)
        yield
    finally:
        release.set()
        revoker.join(30)


def test_a_submission_that_meets_a_revocation_under_way_waits_and_is_refused(
    live_world: World,
) -> None:
    """The revocation holds off the submissions that come after it (let in by the door, it
    had not committed): each waits for it, then reads the token revoked."""
    with revocation_under_way(live_world):
        submitter, answers = _in_a_thread(lambda: live_world.api().submit(SEND_EMAIL))
        _until(
            lambda: _waits_for_run_lock(live_world.agent.pk, "ShareLock", granted=False),
            "the submission waits for the revocation",
        )
    submitter.join(30)
    error_of(answers[0], 401, "not_authenticated")
    assert not ToolCall.objects.exists()


def test_a_retry_that_meets_a_revocation_under_way_waits_and_is_refused(
    live_world: World,
) -> None:
    """A failed write retried with a token being revoked: the retry waits for the
    revocation, then reads the token revoked, and the write is not run again."""
    purge_queue()
    response = live_world.api().submit(SEND_EMAIL)
    call = ToolCall.objects.get(pk=response.json()["id"])
    decide(call_id=call.pk, reviewer=live_world.bob, verdict="approve", comment="ok")
    claim = claim_call(call_id=call.pk)
    assert claim is not None
    refused = Outcome(status=Status.FAILED, error={"code": "busy", "message": "try later"})
    assert finish_call(claim=claim, outcome=refused)
    retry = f"/api/v1/tool-calls/{call.pk}/retry"
    try:
        with revocation_under_way(live_world):
            api = live_world.api()
            auth = {"HTTP_AUTHORIZATION": f"Bearer {api.token}"}
            retrier, answers = _in_a_thread(lambda: api.client.post(retry, **auth))
            _until(
                lambda: _waits_for_run_lock(live_world.agent.pk, "ShareLock", granted=False),
                "the retry waits for the revocation",
            )
        retrier.join(30)
    finally:
        purge_queue()
    error_of(answers[0], 401, "not_authenticated")
    call.refresh_from_db()
    assert call.status == Status.FAILED, "not approved to run again"
    [refusal] = events("call.retry_refused")
    assert (refusal.outcome, refusal.call_id) == ("not_authenticated", call.pk)
