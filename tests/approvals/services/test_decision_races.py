"""Two reviewers clicking at once, with real threads and connections against PostgreSQL:
one outcome, one execution sent, and the loser is shown the current state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.db import connection, connections, transaction
from django.test import Client, override_settings
from django.utils import timezone

from approvals.models import Decision, Status, ToolCall
from audit.models import AuditEvent
from tests.approvals.conftest import make_call, shown_state
from tests.conftest import World
from tests.support.locks import in_a_thread, takes_in_id_order
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
    # The page is read before the race: the verdicts alone meet.
    state = shown_state(client, call)

    def action():  # type: ignore[no-untyped-def]
        return client.post(
            f"/approvals/{call.pk}/decide/",
            {
                "verdict": verdict,
                "comment": "race",
                "arguments_hash": call.arguments_hash,
                "state_hash": state,
                **extra,
            },
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


def _second_waits_for_the_first(
    first: Callable[[], object],
    second: Callable[[], object],
    *,
    held: str,
    first_waits: Callable[[], bool],
    why: Callable[[], str],
) -> None:
    """``first`` started while ``held`` (a statement in a transaction of its own) holds it
    up between its checks and its commit; ``second`` started once it waits there must wait
    for it too (``why()`` says what went wrong if not). Then everything is let go."""
    holder, release = _held(held)
    firsting = in_a_thread(first)
    seconding: threading.Thread | None = None
    try:
        assert first_waits(), "the first never got to its write"
        seconding = in_a_thread(second)
        seconding.join(1.0)
        assert seconding.is_alive(), why()
    finally:
        release.set()
        holder.join(10)
        firsting.join(30)
        if seconding is not None:
            seconding.join(30)


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
    answers: list[object] = []
    _second_waits_for_the_first(
        lambda: answers.append(at_once(decide_through_the_web(bob, call, "approve"))[0]),
        lambda: registry_services.revoke_review(tool=tool, user=world.bob),
        held=f"LOCK TABLE {Decision._meta.db_table} IN SHARE MODE",
        first_waits=lambda: _waiting_to_insert(Decision._meta.db_table),
        why=lambda: "the grant was taken away under an approval's feet",
    )
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

    swept: list[int] = []
    try:
        _second_waits_for_the_first(
            lambda: swept.append(sweeps.complete_restored_quorums()),
            lambda: registry_services.revoke_review(tool=tool, user=world.bob),
            held=f"LOCK TABLE {ToolCall._meta.db_table} IN SHARE MODE",
            first_waits=_waiting_for_a_lock,
            why=lambda: "the grant was taken away under the sweep's feet",
        )
    finally:
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


def _quorum_through_a_team(world: World, *, session_id: str) -> ToolCall:
    """``_restored_quorum``, bob reviewing the tool only through the team "deleters" (his
    own grant taken away): the quorum sweep approves the call on his and dave's say-so."""
    from approvals.services.decisions import decide

    tool = world.tools["delete_customer"]
    team = Group.objects.create(name="deleters")
    registry_services.grant_review(tool=tool, group=team)
    registry_services.revoke_review(tool=tool, user=world.bob)
    world.bob.groups.add(team)
    dave = User.objects.create_user("dave", "dave@example.com", "pw-dave")
    registry_services.grant_review(tool=tool, user=dave)
    call = make_call(world, "delete_customer", session_id=session_id)
    for reviewer in (world.bob, dave):
        decide(
            call_id=call.pk,
            reviewer=User.objects.get(pk=reviewer.pk),
            verdict="approve",
            confirmation="cus_0003",
            authenticated_at=timezone.now(),
        )
        if reviewer == world.bob:
            world.bob.groups.remove(team)
    assert ToolCall.objects.get(pk=call.pk).status == Status.PENDING, "1 of 2 stands"
    world.bob.groups.add(team)  # both stand again
    return call


def _leave_the_team_by_sign_in() -> None:
    """Bob signs in, and the provider no longer puts him in the team."""
    from accounts.oidc import sync_teams

    with override_settings(OIDC_TEAM_MAP={"idp-deleters": "deleters"}):
        sync_teams(user=User.objects.get(username="bob"), claims={"groups": []})


def _team_deleted_in_the_admin() -> None:
    """A superuser deletes the team on the admin's delete page: its grants go by cascade."""
    admin = User.objects.create_superuser("root", "root@example.com", "pw-root")
    client = Client()
    client.force_login(admin)
    team = Group.objects.get(name="deleters")
    response = client.post(f"/admin/auth/group/{team.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content


def _deactivated_in_the_admin() -> None:
    """A superuser unticks "active" on bob's page of the admin."""
    from django.contrib import admin as django_admin

    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    client = Client()
    client.force_login(root)
    bob = User.objects.get(username="bob")
    page = client.get(f"/admin/auth/user/{bob.pk}/change/")
    form = page.context["adminform"].form
    data = {
        name: value
        for name, field in form.fields.items()
        if (value := form.initial.get(name, field.initial)) is not None
        and name not in ("password", "is_active")
    }
    data["groups"] = [g.pk for g in bob.groups.all()]
    data["user_permissions"] = []
    data["date_joined_0"], data["date_joined_1"] = bob.date_joined.strftime(
        "%Y-%m-%d %H:%M:%S"
    ).split()
    data.pop("date_joined", None)
    data.pop("last_login", None)
    for formset in page.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        for name in ("TOTAL_FORMS", "INITIAL_FORMS", "MIN_NUM_FORMS", "MAX_NUM_FORMS"):
            data[management.add_prefix(name)] = management[name].value()
    assert django_admin.site.is_registered(User)
    response = client.post(f"/admin/auth/user/{bob.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert User.objects.get(pk=bob.pk).is_active is False


@pytest.mark.parametrize(
    "lose_it", [_leave_the_team_by_sign_in, _team_deleted_in_the_admin, _deactivated_in_the_admin]
)
def test_a_reviewer_losing_a_team_or_the_account_during_the_quorum_sweep_waits_for_it(
    live_world: World, lose_it: Callable[[], None]
) -> None:
    """Taking a grant away waited for the quorum sweep counting it, but a reviewer losing
    the right to approve otherwise did not: leaving the team that holds the grant (at a
    sign-in through the provider), the team deleted (its grants go by cascade), the account
    deactivated. The change committed between the sweep's count and its commit, and the
    trail showed the call approved after its reviewer could no longer approve it. Each
    such change now locks the rows of the tools concerned, as a grant change does."""
    from approvals import sweeps

    world = live_world
    call = _quorum_through_a_team(world, session_id="team-race")
    swept: list[int] = []
    lost: list[object] = []

    def lose() -> None:
        try:
            lose_it()
            lost.append(AuditEvent.objects.latest("id"))
        except BaseException as exc:  # reported by the assertions below
            lost.append(exc)

    try:
        _second_waits_for_the_first(
            lambda: swept.append(sweeps.complete_restored_quorums()),
            lose,
            held=f"LOCK TABLE {ToolCall._meta.db_table} IN SHARE MODE",
            first_waits=_waiting_for_a_lock,
            why=lambda: f"bob lost the right to approve under the sweep's feet: {lost}",
        )
    finally:
        purge_queue()
    assert swept == [1]
    assert len(lost) == 1 and isinstance(lost[0], AuditEvent), lost
    approved = AuditEvent.objects.get(call_id=call.pk, action="call.approved")
    assert approved.pk < lost[0].pk


def test_a_verdict_that_waited_for_its_reviewers_deactivation_is_refused(
    live_world: World,
) -> None:
    """Bob's verdict, his account read as active when his request began, waited for the
    tool's row while an admin deactivated him (the deactivation locks it first). It then
    went on with the account as read before, and recorded his approval after he was
    deactivated. The verdict reads the account again once it holds the tool's row."""
    from approvals.services.decisions import decide
    from tools_registry.services.grants import hold_reviews_of

    world = live_world
    call = make_call(world, "send_email", session_id="deactivated-race")
    bob = User.objects.get(pk=world.bob.pk)  # as his request read him: active
    taken, release = threading.Event(), threading.Event()

    def deactivate() -> None:
        try:
            with transaction.atomic():
                hold_reviews_of(users=[User.objects.get(pk=bob.pk)])
                User.objects.filter(pk=bob.pk).update(is_active=False)
                taken.set()
                release.wait(30)
        finally:
            connections.close_all()

    answers: list[object] = []

    def approve() -> None:
        try:
            answers.append(decide(call_id=call.pk, reviewer=bob, verdict="approve", comment="race"))
        except BaseException as exc:  # reported by the assertions below
            answers.append(exc)
        finally:
            connections.close_all()

    deactivating = threading.Thread(target=deactivate)
    deactivating.start()
    approving = threading.Thread(target=approve)
    try:
        assert taken.wait(10)
        approving.start()
        assert _waiting_for_a_lock(), "the verdict never waited for the tool's row"
    finally:
        release.set()
        deactivating.join(10)
        if approving.ident is not None:
            approving.join(30)
        purge_queue()
    assert isinstance(answers[0], PermissionDenied), answers
    assert not Decision.objects.filter(call=call).exists()


def test_people_deleted_together_lock_the_tools_they_reviewed_in_one_order(
    live_world: World,
) -> None:
    """The Users list's "delete selected" locks the tools with waiting calls its people
    review (``grants.hold_reviews_of``) in one order of ids for them all. One person at a
    time, it held the first person's tool while waiting for the second's, of a lower id: a
    deactivation holding that one and then asking for the first was a deadlock."""

    world = live_world
    low, high = sorted(
        (world.tools["send_email"], world.tools["issue_refund"]), key=lambda tool: tool.pk
    )
    # The list deletes in the order of names: "ann" first, who reviews the higher id.
    for name, tool in (("ann", high), ("ben", low)):
        person = User.objects.create_user(name, f"{name}@example.com", f"pw-{name}")
        registry_services.grant_review(tool=tool, user=person)
        make_call(world, tool.name, session_id=f"{name}-run")
    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    chosen = list(User.objects.filter(username__in=["ann", "ben"]).values_list("pk", flat=True))
    answers: list[int] = []

    def delete_both() -> None:
        client = Client()
        client.force_login(root)
        answer = client.post(
            "/admin/auth/user/",
            {"action": "delete_selected", "_selected_action": chosen, "post": "yes"},
        )
        answers.append(answer.status_code)

    takes_in_id_order(delete_both, lower=low, higher=high)
    assert answers == [302]
    assert not User.objects.filter(pk__in=chosen).exists()
