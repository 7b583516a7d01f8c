"""Deciding (``approvals/services/decisions.py``): quorum, veto, separation of duties,
binding, typed confirmation, fresh sign-in, switched-off tools and agents. The same through
the web: ``tests/approvals/views/test_decide.py``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from approvals import before_after
from approvals.models import Status, ToolCall
from approvals.services.decisions import (
    AlreadyVoted,
    ArgumentsChanged,
    CannotRun,
    CommentRequired,
    ConfirmationRequired,
    NotPending,
    ReauthenticationRequired,
    SeparationOfDuties,
    confirmation_phrase,
    decide,
)
from audit.models import AuditEvent
from sandbox.models import Customer
from tests.approvals.conftest import ARGUMENTS, login, make_call
from tests.conftest import World, executions_sent
from tools_registry import services as registry_services

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def approve(call: ToolCall, reviewer, **extra):  # type: ignore[no-untyped-def]
    return decide(call_id=call.pk, reviewer=reviewer, verdict="approve", **extra)


def fresh() -> dict[str, object]:
    return {"authenticated_at": timezone.now()}


def test_a_quorum_needs_n_distinct_reviewers(
    world: World, dave, django_capture_on_commit_callbacks
) -> None:
    call = make_call(world, "delete_customer")  # destructive: two approvals by default
    with django_capture_on_commit_callbacks() as sent:
        first = approve(call, world.bob, confirmation="cus_0003", **fresh())
    assert (first.decided, first.approvals, first.call.status) == (False, 1, Status.PENDING)
    assert executions_sent(sent) == []
    with pytest.raises(AlreadyVoted):
        approve(call, world.bob, confirmation="cus_0003", **fresh())
    with django_capture_on_commit_callbacks() as sent:
        second = approve(call, dave, confirmation="cus_0003", **fresh())
    assert (second.decided, second.approvals, second.call.status) == (True, 2, Status.APPROVED)
    assert executions_sent(sent) == [call.pk], "the executor is sent the call once"


def test_one_rejection_vetoes_and_needs_a_comment(world: World, dave) -> None:
    call = make_call(world, "delete_customer")
    approve(call, world.bob, confirmation="cus_0003", **fresh())
    with pytest.raises(CommentRequired):
        decide(call_id=call.pk, reviewer=dave, verdict="reject", comment="  ")
    result = decide(call_id=call.pk, reviewer=dave, verdict="reject", comment="No.")
    assert result.call.status == Status.REJECTED
    registry_services.grant_review(tool=world.tools["delete_customer"], user=world.charlie)
    with pytest.raises(NotPending):
        approve(call, world.charlie, confirmation="cus_0003", **fresh())


def test_the_agents_owner_cannot_approve_but_may_reject(world: World) -> None:
    registry_services.grant_review(tool=world.tools["send_email"], user=world.alice)
    call = make_call(world)
    with pytest.raises(SeparationOfDuties):
        approve(call, world.alice)
    rejected = decide(
        call_id=call.pk, reviewer=world.alice, verdict="reject", comment="Mine, wrong."
    )
    assert rejected.call.status == Status.REJECTED


def test_whoever_owned_the_agent_when_it_made_the_call_cannot_approve_it(world: World) -> None:
    """The agent changed hands after the call: its owner then may still have made it (and
    the new owner did not), so both may reject it, neither approve it."""
    registry_services.grant_review(tool=world.tools["send_email"], user=world.alice)
    registry_services.grant_review(tool=world.tools["send_email"], user=world.charlie)
    call = make_call(world)
    world.agent.owner = world.charlie
    registry_services.save_agent(agent=world.agent, changed_by=world.bob)
    call.refresh_from_db()
    with pytest.raises(SeparationOfDuties, match="You owned the agent when it made this call"):
        approve(call, world.alice)
    with pytest.raises(SeparationOfDuties, match="You own the agent"):
        approve(call, world.charlie)
    page = login(world.alice).get(f"/approvals/{call.pk}/").content.decode()
    assert "You owned the agent when it made this call." in page
    assert 'value="approve"' not in page and 'value="reject"' in page
    later = make_call(world, arguments={**ARGUMENTS["send_email"], "subject": "Later"})
    assert approve(later, world.alice).decided, "made after the agent left her hands"


def test_whoever_issued_a_token_the_agent_used_cannot_approve_its_calls(world: World, dave) -> None:
    """An admin who issued one of the agent's tokens was shown its secret: a call made
    while that token was live may be theirs, so they may reject it, not approve it."""
    before = make_call(world, arguments={**ARGUMENTS["send_email"], "subject": "Before"})
    token, _ = registry_services.issue_token(agent=world.agent, created_by=dave)
    during = make_call(world, arguments={**ARGUMENTS["send_email"], "subject": "During"})
    with pytest.raises(SeparationOfDuties, match="You issued a token"):
        approve(during, dave)
    page = login(dave).get(f"/approvals/{during.pk}/")
    assert "You issued a token the agent could use when it made this call." in page.content.decode()
    assert approve(before, dave).decided, "a call made before the token was issued"
    registry_services.revoke_token(token=token, revoked_by=None)
    after = make_call(world, arguments={**ARGUMENTS["send_email"], "subject": "After"})
    assert approve(after, dave).decided, "a call made after the token was revoked"
    with pytest.raises(SeparationOfDuties):
        approve(during, dave)
    assert decide(call_id=during.pk, reviewer=dave, verdict="reject", comment="Mine?").decided


@pytest.mark.parametrize("acting_for", ["Bob", "BOB@example.com"])
def test_the_person_the_agent_acts_for_cannot_approve(world: World, acting_for: str) -> None:
    call = make_call(world, on_behalf_of=acting_for)
    with pytest.raises(SeparationOfDuties):
        approve(call, world.bob)


def test_an_outsider_cannot_decide(world: World) -> None:
    call = make_call(world)
    with pytest.raises(PermissionDenied):
        approve(call, world.charlie)


def test_the_approval_binds_to_what_was_shown_and_the_tool_version(world: World) -> None:
    call = make_call(world)
    with pytest.raises(ArgumentsChanged):
        approve(call, world.bob, shown_arguments_hash="0" * 64)
    ToolCall.objects.filter(pk=call.pk).update(
        arguments={**call.arguments, "to": "eve@example.com"}
    )
    with pytest.raises(ArgumentsChanged):
        approve(call, world.bob, shown_arguments_hash=call.arguments_hash)
    other = make_call(world)
    tool = world.tools["send_email"]
    tool.version = "changed00000000"
    tool.save()
    with pytest.raises(ArgumentsChanged, match="definition changed"):
        approve(other, world.bob, shown_arguments_hash=other.arguments_hash)
    assert ToolCall.objects.get(pk=other.pk).status == Status.PENDING


def test_a_destructive_approval_needs_its_target_typed(world: World) -> None:
    """The phrase is the record the call erases, not the tool's name: typing it makes the
    reviewer read which record that is."""
    call = make_call(world, "delete_customer")
    assert confirmation_phrase(call) == "cus_0003"
    for typed in (None, "", "cus_000", "CUS_0003", "delete_customer", "cus_0001"):
        with pytest.raises(ConfirmationRequired):
            approve(call, world.bob, confirmation=typed, **fresh())
    assert approve(call, world.bob, confirmation=" cus_0003 ", **fresh()).approvals == 1


def test_a_destructive_approval_needs_a_recent_sign_in(world: World, settings) -> None:
    settings.APPROVALS_REAUTH_WINDOW_SECONDS = 600
    call = make_call(world, "delete_customer")
    now = timezone.now()
    for when in (None, now - timedelta(seconds=601), now + timedelta(hours=1)):
        with pytest.raises(ReauthenticationRequired):
            approve(call, world.bob, confirmation="cus_0003", authenticated_at=when)
    approve(
        call,
        world.bob,
        confirmation="cus_0003",
        authenticated_at=now - timedelta(seconds=590),
    )


def test_writes_and_rejections_need_neither(world: World) -> None:
    assert approve(make_call(world), world.bob).decided
    call = make_call(world, "delete_customer")
    assert decide(call_id=call.pk, reviewer=world.bob, verdict="reject", comment="No").decided


def test_an_overdue_call_expires_instead_of_being_decided(world: World) -> None:
    call = make_call(world, created_at=timezone.now() - timedelta(hours=2))
    with pytest.raises(NotPending, match="expired"):
        approve(call, world.bob)
    assert ToolCall.objects.get(pk=call.pk).status == Status.EXPIRED
    assert AuditEvent.objects.filter(call_id=call.pk, action="call.expired").exists()


@pytest.mark.parametrize("switched_off", ["tool", "agent"])
def test_a_call_whose_tool_or_agent_was_switched_off_cannot_be_approved(
    world: World, switched_off: str
) -> None:
    """Disabling a tool or an agent during an incident stops its waiting calls too."""
    call = make_call(world, "send_email")
    if switched_off == "tool":
        registry_services.update_policy(
            tool=world.tools["send_email"], changes={"enabled": False}, changed_by=None
        )
    else:
        registry_services.set_enabled(agent=world.agent, enabled=False, changed_by=None)
    with pytest.raises(CannotRun, match="cannot run"):
        approve(call, world.bob)
    call.refresh_from_db()
    assert (call.status, call.decisions.count()) == (Status.PENDING, 0)
    rejected = decide(
        call_id=call.pk, reviewer=world.bob, verdict="reject", comment="Switched off."
    )
    assert rejected.call.status == Status.REJECTED


def test_a_rejection_needs_no_current_tool_version_or_state(world: World) -> None:
    """Stopping harm stays easy: a call whose tool changed (it can never be approved) or
    whose record changed since the page was read can still be rejected."""
    old_version = make_call(world)
    tool = world.tools["send_email"]
    tool.version = "changed00000000"
    tool.save()
    rejected = decide(
        call_id=old_version.pk, reviewer=world.bob, verdict="reject", comment="Stale.",
        shown_arguments_hash=old_version.arguments_hash,
    )  # fmt: skip
    assert rejected.call.status == Status.REJECTED
    changing = make_call(world, "update_customer")
    shown = before_after.current_state(changing)
    Customer.objects.filter(customer_id="cus_0001").update(name="Someone Else")
    rejected = decide(
        call_id=changing.pk, reviewer=world.bob, verdict="reject", comment="No.",
        shown_arguments_hash=changing.arguments_hash, shown_state_hash=shown.hash,
    )  # fmt: skip
    assert rejected.call.status == Status.REJECTED
    # A call whose stored arguments were altered is still refused, whatever the verdict.
    altered = make_call(world)
    ToolCall.objects.filter(pk=altered.pk).update(
        arguments={**altered.arguments, "to": "eve@example.com"}
    )
    with pytest.raises(ArgumentsChanged):
        decide(call_id=altered.pk, reviewer=world.bob, verdict="reject", comment="No.")


@pytest.mark.parametrize("lost", ["grant", "account"])
def test_an_approval_stops_counting_once_its_reviewer_may_no_longer_give_it(
    world: World, dave, dora, lost: str, django_capture_on_commit_callbacks
) -> None:
    """A reviewer's grant taken away (or their account deactivated) while a call waits for
    its quorum: their approval no longer makes up the quorum with the next one; the call
    waits for someone who may still approve it."""
    call = make_call(world, "delete_customer")  # two approvals
    assert approve(call, world.bob, confirmation="cus_0003", **fresh()).approvals == 1
    if lost == "grant":
        registry_services.revoke_review(tool=world.tools["delete_customer"], user=world.bob)
    else:
        world.bob.is_active = False
        world.bob.save()
    with django_capture_on_commit_callbacks() as sent:
        second = approve(call, dave, confirmation="cus_0003", **fresh())
    assert (second.decided, second.approvals, second.call.status) == (False, 1, Status.PENDING)
    assert executions_sent(sent) == []
    recorded = AuditEvent.objects.filter(action="call.decision", call_id=call.pk).latest("id")
    assert recorded.data["approvals"] == 1
    page = login(dave).get(f"/approvals/{call.pk}/")
    assert page.status_code == 200
    assert "1 of 2 approvals" in page.content.decode()
    assert "no longer counts: bob may not approve this call now" in page.content.decode()
    with django_capture_on_commit_callbacks() as sent:
        third = approve(call, dora, confirmation="cus_0003", **fresh())
    assert (third.decided, third.approvals, third.call.status) == (True, 2, Status.APPROVED)
    assert executions_sent(sent) == [call.pk]


def test_an_approval_stops_counting_once_its_reviewer_leaves_the_rules_team(
    world: World, dave, dora
) -> None:
    call = make_call(world, "delete_customer")
    ToolCall.objects.filter(pk=call.pk).update(policy={**call.policy, "team": "reviewers"})
    dora.groups.add(dave.groups.get())
    assert approve(call, dave, confirmation="cus_0003", **fresh()).approvals == 1
    dave.groups.clear()
    second = approve(call, dora, confirmation="cus_0003", **fresh())
    assert (second.decided, second.approvals, second.call.status) == (False, 1, Status.PENDING)


def test_the_queue_and_the_agent_count_only_the_approvals_that_stand(world: World, dave) -> None:
    call = make_call(world, "delete_customer")
    approve(call, world.bob, confirmation="cus_0003", **fresh())
    registry_services.revoke_review(tool=world.tools["delete_customer"], user=world.bob)
    approve(call, dave, confirmation="cus_0003", **fresh())
    reviewer = login(dave)
    assert "1 of 2 approvals" in reviewer.get(f"/approvals/{call.pk}/").content.decode()
    assert "1/2" in reviewer.get("/approvals/").content.decode()
    answer = world.api().get(f"/api/v1/tool-calls/{call.pk}").json()
    assert (answer["status"], answer["approvals"]) == ("pending", 1)


def test_an_approval_that_stands_again_completes_the_quorum_at_the_next_sweep(
    world: World, dave, django_capture_on_commit_callbacks
) -> None:
    """bob approved, lost his grant, dave approved (1 of 2), bob's grant came back: both
    approvals stand, and no reviewer is left to give the verdict that would count them."""
    from approvals import sweeps

    call = make_call(world, "delete_customer")
    approve(call, world.bob, confirmation="cus_0003", **fresh())
    registry_services.revoke_review(tool=world.tools["delete_customer"], user=world.bob)
    approve(call, dave, confirmation="cus_0003", **fresh())
    assert sweeps.complete_restored_quorums() == 0, "bob's approval does not stand yet"
    registry_services.grant_review(tool=world.tools["delete_customer"], user=world.bob)
    with django_capture_on_commit_callbacks() as sent:
        assert sweeps.run_executor_sweeps().quorums_completed == 1
    call.refresh_from_db()
    assert call.status == Status.APPROVED
    assert executions_sent(sent) == [call.pk]
    (approved,) = AuditEvent.objects.filter(action="call.approved", call_id=call.pk)
    assert approved.data["approvals"] == 2
    assert sweeps.complete_restored_quorums() == 0


def stuck_quorums(
    world: World, count: int, *, before: ToolCall, by: tuple[User, ...] | None = None
) -> None:
    """``count`` waiting calls like ``before`` and older, each approved ``by`` two reviewers
    (bob and charlie, who may not review the tool, unless told): candidates of the quorum
    sweep that it cannot approve while an approval does not stand. Made in bulk."""
    from approvals.models import Decision, Verdict

    template = ToolCall.objects.get(pk=before.pk)
    fields = {f.attname: getattr(template, f.attname) for f in ToolCall._meta.concrete_fields}
    oldest = template.created_at - timedelta(hours=1)
    calls = ToolCall.objects.bulk_create(
        ToolCall(
            **{
                **fields,
                "id": uuid.uuid4(),
                "request_key": uuid.uuid4().hex,
                "created_at": oldest + timedelta(milliseconds=i),
            }
        )
        for i in range(count)
    )
    Decision.objects.bulk_create(
        Decision(
            call=call,
            reviewer=reviewer,
            verdict=Verdict.APPROVE,
            arguments_hash=call.arguments_hash,
            policy_version=1,
        )
        for call in calls
        for reviewer in by or (world.bob, world.charlie)
    )


def test_the_quorum_sweep_reaches_a_call_behind_more_stuck_ones_than_a_pass_takes(
    world: World, dave, django_capture_on_commit_callbacks
) -> None:
    """Calls whose approvals will never stand again stay candidates until they expire. More
    of them than one pass takes (200) must not hide, pass after pass, a newer call whose
    approvals stand again: each pass goes on from where the last one stopped."""
    from approvals import sweeps

    call = make_call(world, "delete_customer")
    approve(call, world.bob, confirmation="cus_0003", **fresh())
    registry_services.revoke_review(tool=world.tools["delete_customer"], user=world.bob)
    approve(call, dave, confirmation="cus_0003", **fresh())
    registry_services.grant_review(tool=world.tools["delete_customer"], user=world.bob)
    stuck_quorums(world, 250, before=call)
    with django_capture_on_commit_callbacks() as sent:
        completed = [sweeps.complete_restored_quorums() for _ in range(2)]
    call.refresh_from_db()
    assert call.status == Status.APPROVED, "one pass leaves 50 stuck calls, the next reaches it"
    assert sorted(completed) == [0, 1]
    assert executions_sent(sent) == [call.pk]
    assert ToolCall.objects.filter(status=Status.PENDING).count() == 250


def test_the_quorum_sweep_leaves_out_calls_whose_approval_an_inactive_account_gave(
    world: World, dave, django_assert_max_num_queries
) -> None:
    """An approval of a deactivated account never stands: calls that need one cost a pass
    one query, not a check of each under its lock, until the account is active again."""
    from approvals import sweeps

    template = make_call(world, "delete_customer")
    stuck_quorums(world, 250, before=template, by=(world.bob, dave))
    dave.is_active = False
    dave.save()
    with django_assert_max_num_queries(2):
        assert sweeps.complete_restored_quorums() == 0
    dave.is_active = True
    dave.save()
    assert [sweeps.complete_restored_quorums() for _ in range(2)] == [200, 50]
    assert ToolCall.objects.filter(status=Status.PENDING).get() == template


def test_a_candidate_the_quorum_sweep_cannot_approve_costs_the_same_few_statements_however_many_approved(
    world: World,
) -> None:
    """The sweep looks at such a call every pass, until it expires. Its approvers were
    checked one by one (guardian, two queries each), after the tool's row, the call's and
    its tool's allowlist entry were read in a trip each: 65 ms a candidate on a busy host,
    where the database's own work for it took 3 ms."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from approvals.services.decisions import complete_quorum

    template = make_call(world, "delete_customer")
    strangers = tuple(User.objects.create_user(f"stranger-{n}") for n in range(6))
    statements = {}
    for approvers in (strangers[:2], strangers):
        ToolCall.objects.exclude(pk=template.pk).delete()
        stuck_quorums(world, 1, before=template, by=approvers)
        call = ToolCall.objects.exclude(pk=template.pk).get()
        with CaptureQueriesContext(connection) as ran:
            assert complete_quorum(call_id=call.pk, now=timezone.now()) is False
        statements[len(approvers)] = [query["sql"] for query in ran.captured_queries]
    # In the test's transaction, its own is a savepoint, taken and released.
    assert len(statements[6]) == len(statements[2]) <= 6, statements[6]


def test_the_quorum_sweep_counts_a_teams_grant_and_a_superuser_not_another_tools_grant(
    world: World,
) -> None:
    """The approvers of a candidate are checked together (``permissions.reviewers_among``),
    as guardian checks each: a grant to one of their teams counts, a superuser needs none,
    a grant of another tool is none."""
    from django.contrib.auth.models import Group

    from approvals import sweeps

    template = make_call(world, "delete_customer")
    assert template.approvals_required == 2
    team = Group.objects.create(name="on-call")
    member = User.objects.create_user("member")
    member.groups.add(team)
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    elsewhere = User.objects.create_user("elsewhere")
    registry_services.grant_review(tool=world.tools["delete_customer"], group=team)
    registry_services.grant_review(tool=world.tools["send_email"], user=elsewhere)
    stuck_quorums(world, 1, before=template, by=(member, elsewhere))
    stuck_quorums(world, 1, before=template, by=(member, root))
    assert sweeps.complete_restored_quorums() == 1
    (approved,) = ToolCall.objects.filter(status=Status.APPROVED)
    assert {d.reviewer for d in approved.decisions.all()} == {member, root}
    left = ToolCall.objects.filter(status=Status.PENDING, decisions__reviewer=elsewhere)
    assert left.count() == 1


def test_the_quorum_sweep_finds_approvals_stamped_by_a_clock_behind_the_calls(
    world: World, dave
) -> None:
    """The sweep reads the approvals given since the oldest waiting call arrived; a web node
    whose clock is behind the one that stamped the call stamps its approvals earlier."""
    from approvals import sweeps
    from approvals.models import Decision

    call = make_call(world, "delete_customer")
    approve(call, world.bob, confirmation="cus_0003", **fresh())
    registry_services.revoke_review(tool=world.tools["delete_customer"], user=world.bob)
    approve(call, dave, confirmation="cus_0003", **fresh())
    registry_services.grant_review(tool=world.tools["delete_customer"], user=world.bob)
    Decision.objects.filter(call=call).update(created_at=call.created_at - timedelta(minutes=30))

    assert sweeps.complete_restored_quorums() == 1
    call.refresh_from_db()
    assert call.status == Status.APPROVED


def _scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "Relation Name" in node:
        yield node
    for child in node.get("Plans", []):
        yield from _scans(child)


def test_a_quorum_sweep_that_reaches_a_call_after_it_expired_does_not_approve_it(
    world: World, dave
) -> None:
    """The sweep's time is read before its batch; a call that expired while the calls ahead
    of it went by is not approved (and no approval is dated before the expiry)."""
    from approvals import sweeps

    call = make_call(world, "delete_customer")
    approve(call, world.bob, confirmation="cus_0003", **fresh())
    registry_services.revoke_review(tool=world.tools["delete_customer"], user=world.bob)
    approve(call, dave, confirmation="cus_0003", **fresh())
    registry_services.grant_review(tool=world.tools["delete_customer"], user=world.bob)
    batch_began = timezone.now()
    ToolCall.objects.filter(pk=call.pk).update(expires_at=batch_began + timedelta(seconds=0.1))
    time.sleep(0.2)  # the calls ahead of it in the batch
    assert sweeps.complete_restored_quorums(now=batch_began) == 0
    call.refresh_from_db()
    assert call.status == Status.PENDING  # for the expiry sweep to end


def test_a_verdict_of_an_account_deleted_meanwhile_is_refused_not_an_error(world: World) -> None:
    """The request read the account before its verdict waited for the tool's row; deleted
    in that wait, reading it again found nothing, and the verdict was a 500."""
    erin = User.objects.create_user("erin", "erin@example.com", "pw-erin")
    registry_services.grant_review(tool=world.tools["send_email"], user=erin)
    call = make_call(world, "send_email")
    as_the_request_read_her = User.objects.get(pk=erin.pk)
    erin.delete()
    with pytest.raises(PermissionDenied):
        decide(call_id=call.pk, reviewer=as_the_request_read_her, verdict="approve")
    call.refresh_from_db()
    assert call.status == Status.PENDING and not call.decisions.exists()
