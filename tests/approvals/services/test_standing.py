"""Standing approvals: granted with an approval, used by later calls like it, exact in their
number of uses under concurrent submissions, never for destructive tools, revocable, and
named in the audit trail of every call they let through."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction
from django.test import Client, override_settings
from django.utils import timezone

from approvals.models import StandingApproval, Status, ToolCall
from approvals.services import standing
from approvals.services.calls import create_call
from approvals.services.decisions import DecisionRefused, decide
from tests.conftest import World, events
from tests.support.uncommitted import uncommitted
from tools_registry import services as registry_services
from tools_registry.models import Tool
from tools_registry.services.grants import hold_reviews_of

EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}


def submit(
    world: World, arguments: dict[str, Any] | None = None, tool: str = "send_email"
) -> ToolCall:
    return create_call(
        agent=world.agent,
        tool=world.tools[tool],
        arguments=arguments or EMAIL,
        session_id="s-standing",
        request_key=uuid.uuid4().hex,
    )


def approve_with(world: World, call: ToolCall, **terms: Any) -> StandingApproval:
    result = decide(
        call_id=call.pk,
        reviewer=world.bob,
        verdict="approve",
        standing_terms=standing.Terms(**{"seconds": 3600, **terms}),
    )
    assert result.decided and result.standing is not None
    return result.standing


def test_same_arguments_cover_only_the_same_call_and_each_use_is_named(world: World) -> None:
    granted = approve_with(world, submit(world), match="same", max_uses=2)
    again = submit(world)
    assert again.status == Status.APPROVED and again.standing_approval_id == granted.pk
    other = submit(world, {**EMAIL, "subject": "Something else"})
    assert other.status == Status.PENDING and other.standing_approval_id is None
    (approved,) = events("call.approved", call_id=again.pk)
    assert approved.data["by"] == "standing_approval"
    assert approved.data["standing_approval"] == granted.pk
    assert approved.actor_label == "bob"
    assert events("standing_approval.granted")[0].data["max_uses"] == 2
    third = submit(world)
    assert third.status == Status.APPROVED
    assert submit(world).status == Status.PENDING  # two uses, spent
    granted.refresh_from_db()
    assert granted.uses == 2


def test_a_condition_covers_calls_that_meet_it(world: World) -> None:
    approve_with(world, submit(world), match="condition", condition='args.to == "ada@example.com"')
    assert submit(world, {**EMAIL, "body": "Another note."}).status == Status.APPROVED
    assert submit(world, {**EMAIL, "to": "bob@example.com"}).status == Status.PENDING


def test_rules_asking_for_more_are_never_bypassed(world: World) -> None:
    from tools_registry import services as registry_services

    approve_with(world, submit(world), match="any")
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={
            "rules": [{"when": '"external_link" in signals', "then": "require", "approvals": 2}]
        },
        changed_by=world.alice,
    )
    world.tools["send_email"].refresh_from_db()
    linked = submit(world, {**EMAIL, "body": "See https://evil.example.net"})
    assert linked.status == Status.PENDING and linked.approvals_required == 2
    assert submit(world).status == Status.APPROVED


def test_terms_that_cannot_be_granted_refuse_the_whole_verdict(world: World, dora: Any) -> None:
    call = submit(world)
    for terms, message in (
        ({"seconds": 30 * 24 * 3600}, "lasts 1 minute to"),
        ({"seconds": 3600, "max_uses": 0}, "Allow 1 to"),
        ({"seconds": 3600, "match": "condition", "condition": "args.nope == 1"}, "not an argument"),
        ({"seconds": 3600, "match": "condition"}, "Write the condition"),
    ):
        with pytest.raises(DecisionRefused, match=message):
            decide(
                call_id=call.pk,
                reviewer=world.bob,
                verdict="approve",
                standing_terms=standing.Terms(**terms),
            )
        assert ToolCall.objects.get(pk=call.pk).status == Status.PENDING
    assert not StandingApproval.objects.exists()
    deleting = submit(world, {"customer_id": "cus_0003", "reason": "asked"}, tool="delete_customer")
    with pytest.raises(DecisionRefused, match="destructive calls never"):
        decide(
            call_id=deleting.pk,
            reviewer=world.bob,
            verdict="approve",
            confirmation="cus_0003",
            authenticated_at=timezone.now(),
            standing_terms=standing.Terms(seconds=3600),
        )


def test_revoked_or_expired_approvals_cover_nothing(world: World) -> None:
    granted = approve_with(world, submit(world), match="any")
    with pytest.raises(standing.StandingRefused):
        standing.revoke(standing_id=granted.pk, person=world.charlie)
    standing.revoke(standing_id=granted.pk, person=world.bob)
    assert submit(world).status == Status.PENDING
    (revoked,) = events("standing_approval.revoked")
    assert revoked.actor_label == "bob"
    later = approve_with(world, submit(world), match="any")
    StandingApproval.objects.filter(pk=later.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert submit(world).status == Status.PENDING


def test_a_standing_approval_covers_only_the_tool_definition_it_was_given_for(
    world: World,
) -> None:
    """A new version of the tool (a new endpoint, schema or description) is not what its
    author saw: the approval covers none of its calls, over the API too, and its page says
    it ended."""
    granted = approve_with(world, submit(world), match="any")
    assert granted.tool_version == world.tools["send_email"].version
    assert submit(world).status == Status.APPROVED
    Tool.objects.filter(name="send_email").update(version="new-definition")
    world.tools["send_email"].refresh_from_db()
    later = submit(world)
    assert later.status == Status.PENDING and later.standing_approval_id is None
    response = world.api().submit(
        {"tool": "send_email", "session_id": "s-standing", "arguments": EMAIL}
    )
    assert response.status_code == 202 and response.json()["status"] == "pending"
    bob = Client()
    bob.force_login(world.bob)
    assert "ended: the tool changed" in bob.get("/approvals/standing/").content.decode()


@pytest.mark.parametrize("may_reveal", [False, True])
def test_a_condition_reads_hidden_fields_as_its_author_sees_them(
    world: World, may_reveal: bool
) -> None:
    """Which later calls a condition on a hidden field approved would tell an author who
    sees it masked its value one guess at a time: for them it reads the masked value."""
    from tools_registry.services.grants import grant

    tool = world.tools["send_email"]
    registry_services.update_policy(
        tool=tool, changes={"sensitive_fields": ["to"]}, changed_by=world.alice
    )
    tool.refresh_from_db()
    if may_reveal:
        grant(tool=tool, permission="reveal_tool_arguments", user=world.bob)
        approve_with(world, submit(world), match="condition", condition='args.to.startsWith("ada")')
        later = submit(world, {**EMAIL, "body": "Another note."})
        assert later.status == Status.APPROVED
        return
    # Refused as granted, rather than a condition that could never be met, however the field
    # is named; and one naming it in a way no check can see (a key computed as it runs) reads
    # the masked value all the same.
    for condition in ('args.to.startsWith("ada")', 'args["to"].startsWith("ada")'):
        with pytest.raises(DecisionRefused, match="which you see masked"):
            approve_with(world, submit(world), match="condition", condition=condition)
    approve_with(
        world, submit(world), match="condition", condition='args[["to"][0]].startsWith("ada")'
    )
    assert submit(world, {**EMAIL, "body": "Another note."}).status == Status.PENDING


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_max_uses_is_exact_under_concurrent_submissions(live_world: World, round_: int) -> None:
    """24 threads submit at once against a standing approval of 5 uses: exactly 5 calls are
    approved by it, the others wait for reviewers; the counter says 5."""
    world = live_world
    first = submit(world)
    granted = approve_with(world, first, match="any", max_uses=5)
    start = threading.Barrier(24)
    statuses: list[str] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        start.wait()
        try:
            call = create_call(
                agent=world.agent,
                tool=world.tools["send_email"],
                arguments={**EMAIL, "subject": f"Note {n}"},
                session_id="s-burst",
                request_key=f"burst-{round_}-{n}",
            )
            with lock:
                statuses.append(call.status)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(statuses) == 24
    assert statuses.count(Status.APPROVED) == 5
    assert statuses.count(Status.PENDING) == 19
    granted.refresh_from_db()
    assert granted.uses == 5
    assert ToolCall.objects.filter(standing_approval=granted).count() == 5


def _bobs_standing_approval(world: World) -> None:
    first = create_call(
        agent=world.agent, tool=world.tools["send_email"], arguments=EMAIL, session_id="s",
        request_key=uuid.uuid4().hex,
    )  # fmt: skip
    granted = decide(
        call_id=first.pk, reviewer=world.bob, verdict="approve",
        standing_terms=standing.Terms(seconds=3600, match="any"),
    )  # fmt: skip
    assert granted.standing is not None


def _later(world: World, *, on_behalf_of: str = "") -> ToolCall:
    return create_call(
        agent=world.agent, tool=world.tools["send_email"],
        arguments={**EMAIL, "subject": uuid.uuid4().hex}, session_id="s",
        request_key=uuid.uuid4().hex, on_behalf_of=on_behalf_of,
    )  # fmt: skip


def test_a_standing_approval_never_covers_a_call_its_author_could_not_approve(
    world: World,
) -> None:
    """It stands for its author's own vote: not for a call made for them, and not once
    their grant of the tool is gone or their account deactivated."""
    _bobs_standing_approval(world)
    assert _later(world).status == Status.APPROVED  # it works
    assert _later(world, on_behalf_of="bob").status == Status.PENDING
    registry_services.revoke_review(tool=world.tools["send_email"], user=world.bob)
    assert _later(world).status == Status.PENDING
    registry_services.grant_review(tool=world.tools["send_email"], user=world.bob)
    assert _later(world).status == Status.APPROVED
    world.bob.is_active = False
    world.bob.save(update_fields=["is_active"])
    assert _later(world).status == Status.PENDING


def test_a_reviewer_sees_and_revokes_their_own_standing_approvals_on_their_page(
    world: World, dave: Any
) -> None:
    _bobs_standing_approval(world)
    granted = StandingApproval.objects.get()
    bob, other = Client(), Client()
    bob.force_login(world.bob)
    other.force_login(dave)
    assert "send_email" in bob.get("/approvals/standing/").content.decode()
    assert "send_email" not in other.get("/approvals/standing/").content.decode()
    refused = other.post(f"/approvals/standing/{granted.pk}/revoke/", follow=True)
    assert "Only its author or an admin" in refused.content.decode()
    assert bob.post("/approvals/standing/987654/revoke/").status_code == 404
    assert bob.post(f"/approvals/standing/{granted.pk}/revoke/").status_code == 302
    granted.refresh_from_db()
    assert granted.revoked_at is not None and granted.revoked_by == world.bob
    assert _later(world).status == Status.PENDING


def test_an_approver_who_rejects_the_call_takes_back_its_standing_approval(
    world: World,
) -> None:
    """Two approvals needed; bob approves with a standing approval, then rejects the call
    (he saw something since). What came with his approval goes with it: left live, it
    approved the next call like this one once the tool asked one reviewer again."""
    tool = world.tools["send_email"]
    tool.approvals_required = 2
    tool.save()
    call = submit(world)
    result = decide(
        call_id=call.pk,
        reviewer=world.bob,
        verdict="approve",
        standing_terms=standing.Terms(seconds=3600, match="any"),
    )
    assert not result.decided and result.standing is not None
    decide(call_id=call.pk, reviewer=world.bob, verdict="reject", comment="Not this customer.")
    result.standing.refresh_from_db()
    assert result.standing.revoked_by == world.bob and result.standing.revoked_at is not None
    assert events("standing_approval.revoked")[0].data["standing_approval"] == result.standing.pk
    tool.approvals_required = 1
    tool.save()
    assert submit(world).status == Status.PENDING


def test_a_stop_of_the_agent_revokes_its_standing_approvals(world: World, dave: Any) -> None:
    """A stop voids what was decided for the agent before it: a call still wanted after the
    resume is a new call, with its own approval. A standing approval left live approved the
    resumed agent's next calls unseen (the very calls the incident may have been about);
    the stop revokes it, in the trail as the stopper's, however they may otherwise act."""
    bob = Client()
    bob.force_login(world.bob)
    first = world.api().submit({"tool": "send_email", "session_id": "s-stop", "arguments": EMAIL})
    call = ToolCall.objects.get(pk=first.json()["id"])
    approved = bob.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash, "standing": "any"},
    )
    assert approved.status_code == 302
    granted = StandingApproval.objects.get()
    later = {"tool": "send_email", "session_id": "s-stop", "arguments": {**EMAIL, "subject": "2"}}
    assert world.api().submit(later).json()["status"] == "approved"  # it works
    registry_services.stop_agent(agent=world.agent, reason="odd e-mails", stopped_by=dave)
    assert registry_services.resume_agent(agent=world.agent, resumed_by=world.alice)
    again = world.api().submit({**later, "arguments": {**EMAIL, "subject": "3"}})
    assert again.status_code == 202 and again.json()["status"] == "pending"
    granted.refresh_from_db()
    assert granted.revoked_at is not None and granted.revoked_by == dave
    (revoked,) = events("standing_approval.revoked")
    assert revoked.actor_label == "dave" and revoked.data["reason"] == "agent_stopped"
    assert "revoked" in bob.get("/approvals/standing/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_standing_approval_granted_as_the_stop_lands_is_revoked_with_it(
    live_world: World,
) -> None:
    """Bob's approval, with a standing approval, is under way when the agent is stopped: the
    stop waits for the call he holds, then revokes what his approval granted."""
    world = live_world
    call = submit(world)

    def approve() -> None:
        decide(
            call_id=call.pk,
            reviewer=world.bob,
            verdict="approve",
            standing_terms=standing.Terms(seconds=3600, match="any"),
        )

    with uncommitted(approve, commits_after=0.5):
        registry_services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)
    granted = StandingApproval.objects.get()
    assert granted.revoked_at is not None
    assert registry_services.resume_agent(agent=world.agent)
    assert submit(world, {**EMAIL, "subject": "After the resume"}).status == Status.PENDING


@pytest.mark.django_db(transaction=True)
def test_a_stop_waiting_for_a_call_whose_verdict_grants_a_standing_approval_both_finish(
    live_world: World,
) -> None:
    """The other order of the two: bob's verdict holds the call (and its tool, shared) and has
    yet to record his approval and its standing approval; the stop starts, and waits for the
    call. The grant then refers to the agent's row, which the stop locks only after its calls
    (``stop_agent``), so neither waits for the other: no deadlock, both commit, and the stop
    fails the approved call and revokes the standing approval. Real threads, each with its
    own PostgreSQL connection; bob's verdict is paused by a third transaction holding his
    account's row, which the verdict's rows refer to."""
    world = live_world
    call = submit(world)
    User = type(world.bob)
    outcomes: dict[str, Any] = {}
    held, release = threading.Event(), threading.Event()

    def run(name: str, work: Any) -> threading.Thread:
        def target() -> None:
            try:
                outcomes[name] = work()
            except BaseException as exc:  # a deadlock's victim raises here
                outcomes[name] = exc
            finally:
                close_old_connections()
                connection.close()

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def hold_bob() -> None:
        with transaction.atomic():
            User.objects.select_for_update().get(pk=world.bob.pk)
            held.set()
            release.wait(30)

    def approve() -> Any:
        return decide(
            call_id=call.pk,
            reviewer=world.bob,
            verdict="approve",
            standing_terms=standing.Terms(seconds=3600, match="any"),
        )

    def stop() -> Any:
        return registry_services.stop_agent(agent=world.agent, reason="incident", stopped_by=None)

    def waiting() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return int(cursor.fetchone()[0])

    holder = run("hold", hold_bob)
    assert held.wait(10)
    verdict = run("verdict", approve)
    _wait_until(lambda: waiting() == 1)  # the verdict holds the call, waiting at bob's row
    stopper = run("stop", stop)
    _wait_until(lambda: waiting() == 2)  # the stop waits for the call
    release.set()
    for thread in (holder, verdict, stopper):
        thread.join(30)
    assert not any(t.is_alive() for t in (holder, verdict, stopper))
    assert not isinstance(outcomes["verdict"], BaseException), outcomes["verdict"]
    assert not isinstance(outcomes["stop"], BaseException), outcomes["stop"]
    assert outcomes["verdict"].decided and outcomes["stop"].cancelled == []
    call.refresh_from_db()
    assert (call.status, call.error["code"]) == (Status.FAILED, "agent_stopped")
    granted = StandingApproval.objects.get()
    assert granted.revoked_at is not None


def _wait_until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the expected wait never came"
        time.sleep(0.02)


def _hours_around(now: Any, *, start: int, end: int) -> str:
    """Working hours from ``start`` to ``end`` hours after ``now`` (UTC), as the setting reads."""
    return f"{now + timedelta(hours=start):%H:%M}-{now + timedelta(hours=end):%H:%M}"


def test_a_veto_takes_back_every_standing_approval_given_with_the_vetoed_call(
    world: World, dave: Any
) -> None:
    """Outside working hours a rule asks two reviewers. Bob approves the call and allows
    these very arguments in advance; dave vetoes it (the recipient is a fraudster). The next
    morning, when one reviewer is asked again, the agent sends exactly the vetoed call:
    bob's standing approval, given with an approval the veto overruled, let it through unseen.
    One rejection vetoes the call, and what came with its approvals goes with it."""
    tool = world.tools["send_email"]
    registry_services.update_policy(
        tool=tool,
        changes={
            "rules": [{"when": '"outside_hours" in signals', "then": "require", "approvals": 2}]
        },
        changed_by=world.alice,
    )
    now = timezone.now()
    body = {"tool": "send_email", "session_id": "s-veto", "arguments": EMAIL}
    hours = {"COUNTERSIGN_WORKING_DAYS": "mon-sun", "COUNTERSIGN_WORKING_ZONE": "UTC"}
    with override_settings(COUNTERSIGN_WORKING_HOURS=_hours_around(now, start=2, end=3), **hours):
        sent = world.api().submit(body)
    assert sent.status_code == 202 and sent.json()["status"] == "pending"
    call = ToolCall.objects.get(pk=sent.json()["id"])
    assert call.approvals_required == 2
    bob, other = Client(), Client()
    bob.force_login(world.bob)
    other.force_login(dave)
    approved = bob.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash, "standing": "same"},
    )
    assert approved.status_code == 302
    granted = StandingApproval.objects.get()
    rejected = other.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "reject",
            "comment": "That address is a fraudster's.",
            "arguments_hash": call.arguments_hash,
        },
    )
    assert rejected.status_code == 302
    call.refresh_from_db()
    assert call.status == Status.REJECTED
    granted.refresh_from_db()
    assert granted.revoked_at is not None and granted.revoked_by == dave
    (revoked,) = events("standing_approval.revoked")
    assert revoked.actor_label == "dave"
    assert revoked.data == {
        "standing_approval": granted.pk,
        "uses": 0,
        "reason": "call_rejected",
    }
    with override_settings(COUNTERSIGN_WORKING_HOURS=_hours_around(now, start=-1, end=1), **hours):
        again = world.api().submit(body)
    assert again.status_code == 202, again.content
    assert again.json()["status"] == "pending"
    assert ToolCall.objects.get(pk=again.json()["id"]).approvals_required == 1


def test_a_correction_takes_back_the_standing_approvals_of_the_arguments_it_replaced(
    world: World, dave: Any
) -> None:
    """Bob approves a call that needs two reviewers and allows these very arguments in
    advance; dave corrects the recipient (a fraudster's address) and approves the corrected
    call. Bob's approval stops counting: it approved the arguments dave replaced. So must his
    standing approval, or the agent, sending the original arguments again, has them approved
    unseen. Dave's own standing approval, of the corrected arguments, stands."""
    tool = world.tools["send_email"]
    registry_services.update_policy(
        tool=tool,
        changes={"approvals_required": 2},
        changed_by=world.alice,
    )
    tool.refresh_from_db()
    call = submit(world)
    assert call.approvals_required == 2
    bob, other = Client(), Client()
    bob.force_login(world.bob)
    other.force_login(dave)
    approved = bob.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "arguments_hash": call.arguments_hash, "standing": "same"},
    )
    assert approved.status_code == 302
    bobs = StandingApproval.objects.get()
    corrected = {**EMAIL, "to": "ada@example.org"}
    answer = other.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "edited_arguments": json.dumps(corrected),
            "standing": "same",
        },
    )
    assert answer.status_code == 302, answer.content
    call.refresh_from_db()
    assert call.arguments == corrected and call.status == Status.PENDING  # asks two again
    bobs.refresh_from_db()
    assert bobs.revoked_at is not None and bobs.revoked_by == dave
    (revoked,) = events("standing_approval.revoked")
    assert revoked.actor_label == "dave"
    assert revoked.data == {"standing_approval": bobs.pk, "uses": 0, "reason": "call_corrected"}
    daves = StandingApproval.objects.exclude(pk=bobs.pk).get()
    assert daves.revoked_at is None and daves.granted_by == dave
    registry_services.update_policy(
        tool=tool, changes={"approvals_required": 1}, changed_by=world.alice
    )
    tool.refresh_from_db()
    assert submit(world).status == Status.PENDING  # the original arguments, again
    assert submit(world, corrected).status == Status.APPROVED  # dave's, as he allowed


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_a_grant_taken_away_while_a_call_is_matched_leaves_the_call_to_reviewers(
    live_world: World, round_: int
) -> None:
    """Bob's grant of the tool is being taken away (locked, not yet committed) when a call
    his standing approval covers arrives: intake waits for the change and reads him as no
    longer a reviewer, so the call waits for one. It was approved by his standing approval,
    recorded after his grant was gone."""
    world = live_world
    _bobs_standing_approval(world)

    def take_away() -> None:
        registry_services.revoke_review(tool=world.tools["send_email"], user=world.bob)

    with uncommitted(take_away, commits_after=0.3):
        late = _later(world)
    assert late.status == Status.PENDING and late.standing_approval_id is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_an_account_deactivated_while_a_call_is_matched_approves_nothing(
    live_world: World, round_: int
) -> None:
    """As above, bob's account being deactivated the admin's way (``hold_reviews_of``, then
    the save): the tool has no waiting call, but a live standing approval of his, so its row
    is locked too and intake waits for the deactivation."""
    world = live_world
    _bobs_standing_approval(world)
    User = type(world.bob)

    def deactivate() -> None:
        bob = User.objects.get(pk=world.bob.pk)
        hold_reviews_of(users=[bob])
        bob.is_active = False
        bob.save(update_fields=["is_active"])

    with uncommitted(deactivate, commits_after=0.3):
        late = _later(world)
    assert late.status == Status.PENDING and late.standing_approval_id is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(5))
def test_a_standing_approval_revoked_while_a_call_is_matched_covers_nothing(
    live_world: World, round_: int
) -> None:
    """Bob revokes his standing approval (locked, not yet committed) as a call it covers
    arrives: the call's use of it waits for the revocation and finds it gone."""
    world = live_world
    _bobs_standing_approval(world)
    granted = StandingApproval.objects.get()

    def revoke() -> None:
        standing.revoke(standing_id=granted.pk, person=world.bob)

    with uncommitted(revoke, commits_after=0.3):
        late = _later(world)
    assert late.status == Status.PENDING and late.standing_approval_id is None
    granted.refresh_from_db()
    assert granted.uses == 0 and granted.revoked_at is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_each_use_in_the_trail_is_counted_as_the_database_counted_it(
    live_world: World, round_: int
) -> None:
    """Two calls use one standing approval at once: the second waits for the first's use and
    takes the next. Each call's ``call.approved`` says which use it was (1, then 2), not the
    count as read before the other's committed (1 twice)."""
    world = live_world
    _bobs_standing_approval(world)
    with uncommitted(lambda: _later(world), commits_after=0.3):
        second = _later(world)
    assert second.status == Status.APPROVED
    approved = events("call.approved", data__by="standing_approval")
    assert sorted(e.data["uses"] for e in approved) == [1, 2]
    assert StandingApproval.objects.get().uses == 2


def test_a_reviewer_s_live_standing_approvals_lead_their_page_however_many_have_ended(
    world: World,
) -> None:
    """The page lists 200 rows. Live ones first: sorted by ``revoked_at`` ascending,
    PostgreSQL put the never revoked last, and 200 revoked ones (a veto or a stop each
    revokes some) hid a live one from its author, who could no longer revoke it there."""
    _bobs_standing_approval(world)
    live = StandingApproval.objects.get()
    now = timezone.now()
    StandingApproval.objects.bulk_create(
        StandingApproval(
            tool=live.tool, agent=live.agent, granted_by=world.bob, match="any",
            tool_version=live.tool_version, created_at=now, expires_at=now + timedelta(hours=1),
            revoked_at=now - timedelta(minutes=n), revoked_by=world.bob,
        )
        for n in range(200)
    )  # fmt: skip
    bob = Client()
    bob.force_login(world.bob)
    page = bob.get("/approvals/standing/").content.decode()
    assert f'id="standing-{live.pk}"' in page
    assert page.index(f'id="standing-{live.pk}"') < page.index('class="ended"')


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_a_grant_taken_away_as_an_agent_s_request_is_matched_leaves_it_to_reviewers(
    live_world: World, round_: int
) -> None:
    """The same through the agent's API, whose intake reads the standing approvals with the
    tool, before anything waits: the call is accepted, pending, not approved."""
    world = live_world
    _bobs_standing_approval(world)

    def take_away() -> None:
        registry_services.revoke_review(tool=world.tools["send_email"], user=world.bob)

    body = {"tool": "send_email", "arguments": {**EMAIL, "subject": "Later"}, "session_id": "s"}
    with uncommitted(take_away, commits_after=0.3):
        response = world.api().submit(body)
    assert response.status_code == 202, response.content
    late = ToolCall.objects.get(pk=response.json()["id"])
    assert late.status == Status.PENDING and late.standing_approval_id is None


@pytest.mark.django_db(transaction=True)
def test_a_standing_approval_that_expires_while_intake_waits_for_the_tool_covers_nothing(
    live_world: World,
) -> None:
    """Intake waits for a change of the tool's grants under way (charlie's, here) before it
    reads whether the author may still approve; bob's standing approval expires meanwhile.
    Its use is taken at the time it is taken, not when the request arrived."""
    world = live_world
    _bobs_standing_approval(world)
    StandingApproval.objects.update(expires_at=timezone.now() + timedelta(seconds=0.5))

    def grant_charlie() -> None:
        registry_services.grant_review(tool=world.tools["send_email"], user=world.charlie)

    with uncommitted(grant_charlie, commits_after=1.5):
        late = _later(world)
    assert late.status == Status.PENDING and late.standing_approval_id is None
