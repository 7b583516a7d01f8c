"""Two reviewers clicking at once, with real threads and connections against PostgreSQL:
one outcome, one execution sent, and the loser is shown the current state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone

from approvals.models import Decision, Status, ToolCall
from audit.models import AuditEvent
from tests.approvals.conftest import make_call
from tests.conftest import World
from tests.support.workers import purge_queue
from tools_registry import services as registry_services

ROUNDS = 15


def at_once(*actions: Callable[[], object]) -> list[object]:
    """Run the actions in threads released together; each thread uses its own connection."""
    barrier = threading.Barrier(len(actions))
    results: list[object] = [None] * len(actions)

    def run(index: int, action: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = action()
        except BaseException as exc:  # reported by the assertions below
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def decide_through_the_web(client: Client, call: ToolCall, verdict: str, **extra: str):  # type: ignore[no-untyped-def]
    def action():  # type: ignore[no-untyped-def]
        return client.post(
            f"/approvals/{call.pk}/decide/",
            {"verdict": verdict, "comment": "race", "arguments_hash": call.arguments_hash, **extra},
            HTTP_HX_REQUEST="true",
        )

    return action


def queued_messages() -> int:
    return redis.Redis.from_url(settings.REDIS_URL).llen(settings.CELERY_TASK_DEFAULT_QUEUE)


def test_concurrent_verdicts_yield_one_outcome_and_one_execution(live_world: World) -> None:
    world = live_world
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave")
    for tool in world.tools.values():
        registry_services.grant_review(tool=tool, user=dave)
    bob_client, dave_client = Client(), Client()
    bob_client.force_login(world.bob)
    dave_client.force_login(dave)
    purge_queue()
    approved_calls = 0
    try:
        # 1. Two approvals of a call that needs one: one wins, the other sees "approved".
        for _ in range(ROUNDS):
            call = make_call(world, "send_email")
            responses = at_once(
                decide_through_the_web(bob_client, call, "approve"),
                decide_through_the_web(dave_client, call, "approve"),
            )
            assert [getattr(r, "status_code", r) for r in responses] == [200, 200]
            bodies = [r.content.decode() for r in responses]  # type: ignore[union-attr]
            assert sum("This call is already approved." in b for b in bodies) == 1, bodies
            assert all("Approved" in b for b in bodies)
            assert Decision.objects.filter(call=call).count() == 1
            assert ToolCall.objects.get(pk=call.pk).status == Status.APPROVED
            assert AuditEvent.objects.filter(call_id=call.pk, action="call.approved").count() == 1
            approved_calls += 1

        # 2. An approval against a rejection: whichever is first decides, alone.
        for _ in range(ROUNDS):
            call = make_call(world, "send_email")
            at_once(
                decide_through_the_web(bob_client, call, "approve"),
                decide_through_the_web(dave_client, call, "reject"),
            )
            status = ToolCall.objects.get(pk=call.pk).status
            assert status in (Status.APPROVED, Status.REJECTED)
            assert Decision.objects.filter(call=call).count() == 1
            approved_calls += status == Status.APPROVED

        # 3. The two approvals a destructive call needs, at once: both count, it runs once.
        for _ in range(ROUNDS):
            call = make_call(world, "delete_customer")
            responses = at_once(
                decide_through_the_web(bob_client, call, "approve", confirmation="cus_0003"),
                decide_through_the_web(dave_client, call, "approve", confirmation="cus_0003"),
            )
            assert [getattr(r, "status_code", r) for r in responses] == [200, 200]
            assert Decision.objects.filter(call=call).count() == 2
            assert ToolCall.objects.get(pk=call.pk).status == Status.APPROVED
            assert AuditEvent.objects.filter(call_id=call.pk, action="call.approved").count() == 1
            approved_calls += 1

        # Each approved call was sent to the executor exactly once.
        assert queued_messages() == approved_calls
    finally:
        purge_queue()


def _held(statement: str) -> tuple[threading.Thread, threading.Event]:
    """``statement`` run in a transaction of its own, in a thread, held open until the event
    is set."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement)
                taken.set()
                release.wait(30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread, release


def _waiting_to_insert(table: str, timeout: float = 10) -> bool:
    """Whether a session waits for a lock to insert into ``table``."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s",
                [f'INSERT INTO "{table}"%'],
            )
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.02)
    return False


def test_a_grant_taken_away_during_an_approval_waits_for_it(live_world: World) -> None:
    """An approval had checked that its reviewer may review the tool, and had not yet
    committed, when an admin took the grant away: the revocation committed first, and the
    approval after it, so the trail showed a call approved by someone without the grant.
    The revocation now waits for the approval under way (both lock the tool's row), which
    is then the earlier of the two, as the trail says. The pause between the approval's
    checks and its commit is widened here by holding its INSERT of the verdict."""
    world = live_world
    bob = Client()
    bob.force_login(world.bob)
    try:
        for round_ in range(5):
            _approval_meets_a_revocation(world, bob, session_id=f"grant-race-{round_}")
    finally:
        purge_queue()


def _approval_meets_a_revocation(world: World, bob: Client, *, session_id: str) -> None:
    tool = world.tools["send_email"]
    registry_services.grant_review(tool=tool, user=world.bob)
    call = make_call(world, "send_email", session_id=session_id)
    holder, release = _held(f"LOCK TABLE {Decision._meta.db_table} IN SHARE MODE")
    answers: list[object] = []

    def approve() -> None:
        answers.append(at_once(decide_through_the_web(bob, call, "approve"))[0])

    def revoke() -> None:
        try:
            registry_services.revoke_review(tool=tool, user=world.bob)
        finally:
            connections.close_all()

    approving = threading.Thread(target=approve)
    approving.start()
    revoking = threading.Thread(target=revoke)
    try:
        assert _waiting_to_insert(Decision._meta.db_table), "the approval never got there"
        revoking.start()
        revoking.join(1.0)
        assert revoking.is_alive(), "the grant was taken away under an approval's feet"
    finally:
        release.set()
        holder.join(10)
        approving.join(30)
        if revoking.ident is not None:
            revoking.join(30)
    # The page shown after it may already be refused (403): the grant is gone by then.
    assert getattr(answers[0], "status_code", answers[0]) in (200, 403)
    assert ToolCall.objects.get(pk=call.pk).status == Status.APPROVED
    approved = AuditEvent.objects.get(call_id=call.pk, action="call.approved")
    removed = AuditEvent.objects.filter(action="grant.removed").latest("id")
    assert approved.pk < removed.pk


def _waiting_for_a_lock(timeout: float = 10) -> bool:
    """Whether a session of this database waits for a lock."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.02)
    return False


def _restored_quorum(world: World, *, session_id: str) -> ToolCall:
    """A call of 2 approvals: bob's, given, then not standing (his grant taken away) when
    dave's came, standing again (the grant given back): the quorum sweep approves it."""
    from approvals.services.decisions import decide

    tool = world.tools["delete_customer"]
    dave = User.objects.get_or_create(username="dave", defaults={"email": "dave@example.com"})[0]
    registry_services.grant_review(tool=tool, user=dave)
    call = make_call(world, "delete_customer", session_id=session_id)
    for reviewer in (world.bob, dave):
        decide(
            call_id=call.pk,
            reviewer=reviewer,
            verdict="approve",
            confirmation="cus_0003",
            authenticated_at=timezone.now(),
        )
        if reviewer == world.bob:
            registry_services.revoke_review(tool=tool, user=world.bob)
    assert ToolCall.objects.get(pk=call.pk).status == Status.PENDING, "1 of 2 stands"
    registry_services.grant_review(tool=tool, user=world.bob)  # both stand again
    return call


def test_a_grant_taken_away_while_the_quorum_sweep_counts_it_waits_for_it(
    live_world: World,
) -> None:
    """The quorum sweep (``complete_restored_quorums``) approves a call whose approvals stand
    again, as a verdict does, so it holds the tool's row as a verdict does: it had counted
    bob's approval, and not yet committed, when an admin took bob's grant away; the
    revocation committed first and the approval after it, so the trail showed a call
    approved on the say-so of someone without the grant. The pause between the sweep's
    checks and its commit is widened here by holding its UPDATE of the call."""
    from approvals import sweeps

    world = live_world
    tool = world.tools["delete_customer"]
    call = _restored_quorum(world, session_id="quorum-race")

    holder, release = _held(f"LOCK TABLE {ToolCall._meta.db_table} IN SHARE MODE")
    swept: list[int] = []

    def sweep() -> None:
        try:
            swept.append(sweeps.complete_restored_quorums())
        finally:
            connections.close_all()

    def revoke() -> None:
        try:
            registry_services.revoke_review(tool=tool, user=world.bob)
        finally:
            connections.close_all()

    sweeping = threading.Thread(target=sweep)
    sweeping.start()
    revoking = threading.Thread(target=revoke)
    try:
        assert _waiting_for_a_lock(), "the sweep never got to its write"
        revoking.start()
        revoking.join(1.0)
        assert revoking.is_alive(), "the grant was taken away under the sweep's feet"
    finally:
        release.set()
        holder.join(10)
        sweeping.join(30)
        if revoking.ident is not None:
            revoking.join(30)
        purge_queue()
    assert swept == [1]
    approved = AuditEvent.objects.get(call_id=call.pk, action="call.approved")
    removed = AuditEvent.objects.filter(action="grant.removed").latest("id")
    assert approved.pk < removed.pk


def test_the_quorum_sweep_does_not_wait_for_a_change_of_the_tool(live_world: World) -> None:
    """A grant edit or a policy change holding the tool's row (in a process that may be
    paused) leaves the call to the sweep's next pass rather than holding the sweep up."""
    from approvals import sweeps

    call = _restored_quorum(live_world, session_id="quorum-skip")
    tool = live_world.tools["delete_customer"]
    row = f"SELECT 1 FROM {tool._meta.db_table} WHERE id = {tool.pk} FOR UPDATE"  # noqa: S608
    holder, release = _held(row)
    try:
        started = time.monotonic()
        assert sweeps.complete_restored_quorums() == 0
        assert time.monotonic() - started < 5, "the sweep waited for the tool's row"
    finally:
        release.set()
        holder.join(10)
    assert ToolCall.objects.get(pk=call.pk).status == Status.PENDING
    try:
        assert sweeps.complete_restored_quorums() == 1, "the next pass approves it"
    finally:
        purge_queue()
