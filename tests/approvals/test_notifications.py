"""E-mails to reviewers: new pending calls, reminders, escalation before expiry; each once."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals import notifications, sweeps
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from audit.models import AuditEvent
from tests.approvals.conftest import make_call
from tests.conftest import World
from tools_registry import services as registry_services


def run(callbacks, fn, **kwargs):  # type: ignore[no-untyped-def]
    """Run a notification step; the e-mails leave when its transactions commit."""
    with callbacks(execute=True):
        return fn(**kwargs)


def addressed(mailoutbox) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(address for message in mailoutbox for address in message.to)


def test_a_new_call_notifies_its_reviewers_once(
    world: World, dave, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    User.objects.create_user("gone", "gone@example.com", "x", is_active=False).groups.add(
        Group.objects.get(name="reviewers")
    )
    User.objects.create_user("mute", "", "x").groups.add(Group.objects.get(name="reviewers"))
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"email": "ada.l@example.com"}},
    )
    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert addressed(mailoutbox) == ["bob@example.com", "dave@example.com"]
    message = mailoutbox[0]
    assert "update_customer" in message.subject
    assert f"/approvals/{call.pk}/" in message.body
    assert "ada.l@example.com" not in message.body, "arguments stay behind the sign-in"
    event = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert event.data["recipients"] == ["bob", "dave"]

    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 0
    assert len(mailoutbox) == 2


def test_a_call_decided_before_the_sweep_is_not_announced(
    world: World, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    call = make_call(world)
    decide(call_id=call.pk, reviewer=world.bob, verdict="reject", comment="No.")
    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 0
    assert mailoutbox == []


def test_a_reminder_goes_once_to_those_who_have_not_voted(
    world: World, dave, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    tool = world.tools["delete_customer"]
    tool.reminder_after_seconds = 600
    tool.save()
    now = timezone.now()
    waiting = make_call(world, "delete_customer", created_at=now - timedelta(minutes=11))
    make_call(world, "delete_customer", created_at=now - timedelta(minutes=5))  # not yet
    make_call(world, "send_email", created_at=now - timedelta(minutes=50))  # no reminder set
    decide(
        call_id=waiting.pk,
        reviewer=dave,
        verdict="approve",
        confirmation="cus_0003",
        authenticated_at=now,
    )
    assert run(django_capture_on_commit_callbacks, notifications.send_reminders) == 1
    assert addressed(mailoutbox) == ["bob@example.com"]
    assert mailoutbox[0].subject.startswith("[Countersign] Reminder: delete_customer")
    assert "waited 11 minutes" in mailoutbox[0].body
    assert run(django_capture_on_commit_callbacks, notifications.send_reminders) == 0
    assert ToolCall.objects.get(pk=waiting.pk).reminded_at is not None


def test_a_call_about_to_expire_escalates_to_the_second_team_once(
    world: World, mailoutbox, django_capture_on_commit_callbacks, settings
) -> None:
    settings.APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS = 600
    managers = Group.objects.create(name="payments-managers")
    User.objects.create_user("erin", "erin@example.com", "x").groups.add(managers)
    tool = world.tools["issue_refund"]
    tool.escalation_group = managers
    tool.save()
    now = timezone.now()
    # TTL 3600 s: created 55 minutes ago, it expires in 5 minutes.
    closing = make_call(world, "issue_refund", created_at=now - timedelta(minutes=55))
    make_call(world, "issue_refund", created_at=now - timedelta(minutes=40))  # 20 minutes left
    make_call(world, "send_email", created_at=now - timedelta(minutes=55))  # no escalation team
    decided = make_call(world, "issue_refund", created_at=now - timedelta(minutes=56))
    decide(call_id=decided.pk, reviewer=world.bob, verdict="reject", comment="No.")

    assert run(django_capture_on_commit_callbacks, notifications.escalate_expiring) == 1
    assert addressed(mailoutbox) == ["erin@example.com"]
    assert "Escalated: issue_refund" in mailoutbox[0].subject
    assert "payments-managers" in mailoutbox[0].body
    event = AuditEvent.objects.get(call_id=closing.pk, action="call.escalation_sent")
    assert event.data == {
        "kind": "escalation",
        "recipients": ["erin"],
        "group": "payments-managers",
    }
    assert run(django_capture_on_commit_callbacks, notifications.escalate_expiring) == 0


def _escalating_refunds(world: World, settings, *, ttl: int) -> None:  # type: ignore[no-untyped-def]
    settings.APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS = 900
    managers = Group.objects.create(name="payments-managers")
    User.objects.create_user("erin", "erin@example.com", "x").groups.add(managers)
    tool = world.tools["issue_refund"]
    tool.escalation_group = managers
    tool.approval_ttl_seconds = ttl
    tool.save()


def test_escalation_comes_at_most_half_way_through_a_short_ttl(
    world: World, settings, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    _escalating_refunds(world, settings, ttl=600)
    call = make_call(world, "issue_refund")
    escalate = notifications.escalate_expiring
    at = call.created_at + timedelta(seconds=299)
    assert run(django_capture_on_commit_callbacks, escalate, now=at) == 0
    at = call.created_at + timedelta(seconds=300)
    assert run(django_capture_on_commit_callbacks, escalate, now=at) == 1


def test_escalation_keeps_to_the_ttl_a_call_was_given_when_its_tool_changes_it(
    world: World, settings, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """A TTL raised after a call came did not escalate it at once, nor did one cut escalate
    the calls already waiting only moments before their expiry."""
    _escalating_refunds(world, settings, ttl=600)
    short = make_call(world, "issue_refund")  # 10 minutes to live: escalates 5 minutes in
    tool = world.tools["issue_refund"]
    tool.approval_ttl_seconds = 86400
    tool.save()
    escalate = notifications.escalate_expiring
    at = short.created_at + timedelta(seconds=60)
    assert run(django_capture_on_commit_callbacks, escalate, now=at) == 0
    at = short.created_at + timedelta(seconds=300)
    assert run(django_capture_on_commit_callbacks, escalate, now=at) == 1

    long = make_call(world, "issue_refund")  # a day to live: escalates 15 minutes before
    tool.approval_ttl_seconds = 60
    tool.save()
    assert long.expires_at is not None
    at = long.expires_at - timedelta(seconds=900)
    assert run(django_capture_on_commit_callbacks, escalate, now=at) == 1
    assert AuditEvent.objects.filter(call_id=long.pk, action="call.escalation_sent").exists()


def test_the_beat_sweep_expires_first_then_notifies(
    world: World, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    overdue = make_call(world, created_at=timezone.now() - timedelta(hours=2))
    fresh = make_call(world)
    with django_capture_on_commit_callbacks(execute=True):
        report = sweeps.run_all()
    assert (report.expired, report.notified) == (1, 1)
    assert ToolCall.objects.get(pk=overdue.pk).status == Status.EXPIRED
    assert [f"/approvals/{fresh.pk}/" in m.body for m in mailoutbox] == [True]


def test_a_failing_mail_server_does_not_break_the_sweep(
    world: World, django_capture_on_commit_callbacks, settings, caplog
) -> None:
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": 9, "timeout": 1},
        }
    }
    call = make_call(world)
    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert "could not send" in caplog.text
    assert ToolCall.objects.get(pk=call.pk).reviewers_notified_at is not None
    failed = AuditEvent.objects.get(call_id=call.pk, action="call.notification_failed")
    assert (failed.outcome, failed.data) == (
        "server_down",
        {"kind": "new_call", "recipients": ["bob"]},
    ), "the trail says the reviewers it named as told got nothing"


@pytest.fixture
def silent_mail_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A mail server that takes connections and never says a word (a hung SMTP relay)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_hung_mail_server_holds_a_run_up_once_and_the_rest_wait_for_the_next(
    live_world: World, settings, silent_mail_server, mailoutbox
) -> None:
    """Each send waits out the mail server's timeout: a run that went on after the first one
    hung kept its worker (a slot the executor needs) for the timeout times every call due,
    and the calls it claimed were never announced."""
    port, accepted = silent_mail_server
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 0.5},
        }
    }
    calls = [make_call(live_world, session_id=f"run-{n}") for n in range(4)]
    notifications.run()
    assert len(accepted) == 1, "one wait for the mail server per run"
    waiting = ToolCall.objects.filter(pk__in=[c.pk for c in calls], reviewers_notified_at=None)
    assert waiting.count() == 3
    failed = AuditEvent.objects.get(action="call.notification_failed")
    assert failed.outcome == "server_down"
    assert failed.data["recipients"] == ["bob"]
    assert not waiting.filter(pk=failed.call_id).exists(), "the one call the run took"

    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
    assert notifications.run().notified == 3
    assert not waiting.exists()
    assert sorted(m.body.split("Review it: ")[1].strip() for m in mailoutbox) == sorted(
        f"{settings.PUBLIC_URL}/approvals/{c.pk}/" for c in calls[1:]
    )


@pytest.mark.django_db(transaction=True)
def test_an_address_the_mail_cannot_carry_stops_only_its_own_message(
    live_world: World, mailoutbox
) -> None:
    """An address refused for itself (here one Django will not write into a header) says
    nothing about the server: the run goes on with the next call."""
    User.objects.create_user("mallory", "mallory@example.com\nBcc: all@example.com", "x")
    registry_services.grant_review(
        tool=live_world.tools["send_email"], user=User.objects.get(username="mallory")
    )
    calls = [make_call(live_world, session_id=f"run-{n}") for n in range(2)]
    assert notifications.run().notified == 2
    assert addressed(mailoutbox) == ["bob@example.com", "bob@example.com"]
    assert all(any(f"/approvals/{c.pk}/" in m.body for m in mailoutbox) for c in calls)


@pytest.mark.django_db(transaction=True)
def test_an_address_the_mail_cannot_carry_does_not_silence_the_reviewers_after_it(
    live_world: World, mailoutbox
) -> None:
    """The call's messages went in one batch: the first that failed ended it, and every
    reviewer after it (in name order) never heard of the call."""
    aaron = User.objects.create_user("aaron", "aaron@example.com\nBcc: all@example.com", "x")
    registry_services.grant_review(tool=live_world.tools["send_email"], user=aaron)
    call = make_call(live_world)
    assert notifications.run().notified == 1
    assert addressed(mailoutbox) == ["bob@example.com"]
    assert f"/approvals/{call.pk}/" in mailoutbox[0].body


@pytest.fixture
def refusing_mail_server() -> Iterator[tuple[int, list[str]]]:
    """A mail server that refuses one mailbox (550, a colleague who left) and takes the rest;
    yields its port and the recipients it accepted a message for."""
    listener = socket.create_server(("127.0.0.1", 0))
    delivered: list[str] = []

    def session(connection: socket.socket) -> None:
        stream = connection.makefile("rb")
        connection.sendall(b"220 test ESMTP\r\n")
        recipients: list[str] = []
        for raw in stream:
            line = raw.decode().strip()
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == "RCPT":
                if "gone@example.com" in line:
                    connection.sendall(b"550 5.1.1 no such mailbox\r\n")
                    continue
                recipients.append(line.split("<", 1)[1].rstrip(">"))
            elif verb == "DATA":
                connection.sendall(b"354 go on\r\n")
                for body in stream:
                    if body in (b".\r\n", b".\n"):
                        break
                delivered.extend(recipients)
            elif verb == "QUIT":
                connection.sendall(b"221 bye\r\n")
                break
            if verb in ("MAIL", "RSET"):
                recipients = []
            if verb != "DATA":
                connection.sendall(b"250 ok\r\n")
            else:
                connection.sendall(b"250 queued\r\n")
        connection.close()

    def serve() -> None:
        while True:
            try:
                connection = listener.accept()[0]
            except OSError:
                return
            threading.Thread(target=session, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], delivered
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_a_mailbox_the_server_refuses_does_not_silence_the_other_reviewers(
    live_world: World, settings, refusing_mail_server, caplog
) -> None:
    """A 550 for one reviewer says nothing about the others: each still gets the call, and
    the run goes on to the next call."""
    port, delivered = refusing_mail_server
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 5},
        }
    }
    gone = User.objects.create_user("ada", "gone@example.com", "x")
    registry_services.grant_review(tool=live_world.tools["send_email"], user=gone)
    calls = [make_call(live_world, session_id=f"run-{n}") for n in range(2)]
    assert notifications.run().notified == 2
    assert delivered == ["bob@example.com", "bob@example.com"]
    assert "could not send" in caplog.text
    for call in calls:
        told = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
        assert told.data["recipients"] == ["ada", "bob"]
        failed = AuditEvent.objects.get(call_id=call.pk, action="call.notification_failed")
        assert (failed.outcome, failed.data) == (
            "refused",
            {"kind": "new_call", "recipients": ["ada"]},
        )


def test_the_agents_owner_and_the_end_user_are_not_asked_to_decide_their_own_call(
    world: World, dave, mailoutbox, django_capture_on_commit_callbacks, settings
) -> None:
    """Separation of duties: they may reject, never approve, so no mail asks them for a
    decision, reminds them of a quorum they cannot make or escalates their call to them."""
    settings.APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS = 600
    tool = world.tools["send_email"]
    registry_services.grant_review(tool=tool, user=world.alice)
    tool.reminder_after_seconds = 60
    tool.escalation_group = Group.objects.get(name="reviewers")
    tool.save()
    world.alice.groups.add(tool.escalation_group)
    world.bob.groups.add(tool.escalation_group)
    call = make_call(
        world, on_behalf_of="dave@example.com", created_at=timezone.now() - timedelta(minutes=55)
    )
    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert run(django_capture_on_commit_callbacks, notifications.send_reminders) == 1
    assert run(django_capture_on_commit_callbacks, notifications.escalate_expiring) == 1
    assert addressed(mailoutbox) == ["bob@example.com"] * 3
    event = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert event.data["recipients"] == ["bob"]


def needs_team(world: World, *teams: str) -> None:
    """Every update_customer call needs approvers in each of ``teams``: the first from the
    rule that holds, the others from rules that cannot be evaluated on the demo arguments
    (they change no phone), which fail closed and add their team."""
    for team in teams:
        Group.objects.get_or_create(name=team)
    rules = [
        {"when": f'args.changes.phone == "{n}"', "then": "require", "approvals": 1, "team": team}
        for n, team in enumerate(teams[1:])
    ] + [{"when": 'args.customer_id.startsWith("cus_")', "then": "require", "approvals": 1,
          "team": teams[0]}]  # fmt: skip
    tool = world.tools["update_customer"]
    registry_services.update_policy(tool=tool, changes={"rules": rules}, changed_by=world.alice)
    tool.refresh_from_db()


def join(person: User, *teams: str) -> None:
    person.groups.add(*Group.objects.filter(name__in=teams))


def test_a_call_that_needs_a_team_is_announced_and_reminded_to_its_members_only(
    world: World, dave, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """dave reviews the tool but is not in finance: he may reject the call, not approve it,
    so no mail asks him for an approval the call's page would refuse him."""
    needs_team(world, "finance")
    join(world.bob, "finance")
    tool = world.tools["update_customer"]
    tool.reminder_after_seconds = 60
    tool.save()
    call = make_call(world, "update_customer", created_at=timezone.now() - timedelta(minutes=5))
    assert call.policy["teams"] == ["finance"]

    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert addressed(mailoutbox) == ["bob@example.com"]
    assert "waits for your review" in mailoutbox[0].subject
    assert "Approvers: the finance team\n" in mailoutbox[0].body
    told = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert told.data == {"kind": "new_call", "recipients": ["bob"], "teams": ["finance"]}

    assert run(django_capture_on_commit_callbacks, notifications.send_reminders) == 1
    assert addressed(mailoutbox[1:]) == ["bob@example.com"]
    assert "Approvers: the finance team\n" in mailoutbox[1].body
    reminded = AuditEvent.objects.get(call_id=call.pk, action="call.reminder_sent")
    assert reminded.data["recipients"] == ["bob"]


def test_a_call_nobody_is_in_every_team_of_still_reaches_its_reviewers_saying_so(
    world: World, dave, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """bob is in finance, dave in security, nobody in both: nobody can approve the call, so
    the reviewers told of every call still hear of it, and the mail says an admin must act."""
    needs_team(world, "finance", "security")
    join(world.bob, "finance")
    join(dave, "security")
    tool = world.tools["update_customer"]
    tool.reminder_after_seconds = 60
    tool.save()
    call = make_call(world, "update_customer", created_at=timezone.now() - timedelta(minutes=5))
    assert call.policy["teams"] == ["finance", "security"]

    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert run(django_capture_on_commit_callbacks, notifications.send_reminders) == 1
    assert (
        addressed(mailoutbox) == ["bob@example.com", "bob@example.com"] + ["dave@example.com"] * 2
    )
    for message in mailoutbox:
        assert "needs an admin" in message.subject
        assert (
            "Nobody granted review of update_customer is a member of all of the teams this call "
            "needs its approvals from (finance, security), so none of its reviewers can approve "
            "it. An admin must act before it expires"
        ) in " ".join(message.body.split())
        assert "Approvers: members of both finance and security\n" in message.body
    for action in ("call.reviewers_notified", "call.reminder_sent"):
        event = AuditEvent.objects.get(call_id=call.pk, action=action)
        assert (event.data["recipients"], event.data["teams"], event.data["no_approver"]) == (
            ["bob", "dave"],
            ["finance", "security"],
            "no_member",
        )


def test_the_agents_owner_in_the_team_is_no_approver_for_its_call(
    world: World, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """alice owns the agent: she is in finance and reviews the tool, but separation of duties
    keeps her from approving, so nobody can; bob, outside finance, is told so, and she is not
    mailed."""
    needs_team(world, "finance")
    registry_services.grant_review(tool=world.tools["update_customer"], user=world.alice)
    join(world.alice, "finance")
    call = make_call(world, "update_customer")
    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert addressed(mailoutbox) == ["bob@example.com"]
    body = " ".join(mailoutbox[0].body.split())
    assert (
        "The only reviewers of update_customer in all of the teams this call needs its approvals "
        "from (finance) may not approve it (separation of duties), so none of its reviewers "
        "can approve it."
    ) in body
    event = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert event.data["no_approver"] == "conflicted"


def test_an_escalation_says_who_may_approve_and_that_nobody_can(
    world: World, mailoutbox, django_capture_on_commit_callbacks, settings
) -> None:
    """The escalation team hears of the call whatever teams it needs (it is there to act),
    and is told that no reviewer of the tool can approve it."""
    settings.APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS = 600
    needs_team(world, "finance")
    managers = Group.objects.create(name="payments-managers")
    User.objects.create_user("erin", "erin@example.com", "x").groups.add(managers)
    tool = world.tools["update_customer"]
    tool.escalation_group = managers
    tool.save()
    call = make_call(world, "update_customer", created_at=timezone.now() - timedelta(minutes=55))
    assert run(django_capture_on_commit_callbacks, notifications.escalate_expiring) == 1
    assert addressed(mailoutbox) == ["erin@example.com"]
    body = " ".join(mailoutbox[0].body.split())
    assert "Approvers: the finance team" in body
    assert "Nobody granted review of update_customer is a member of all of the teams" in body
    event = AuditEvent.objects.get(call_id=call.pk, action="call.escalation_sent")
    assert event.data == {
        "kind": "escalation",
        "recipients": ["erin"],
        "group": "payments-managers",
        "teams": ["finance"],
        "no_approver": "no_member",
    }


def test_a_call_whose_approvers_have_no_address_reaches_the_other_reviewers_saying_so(
    world: World, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """carol is in finance and may approve, but no mail can reach her: bob, outside finance,
    is told of the call rather than nobody, and why nobody who can approve it was."""
    needs_team(world, "finance")
    carol = User.objects.create_user("carol", "", "x")
    registry_services.grant_review(tool=world.tools["update_customer"], user=carol)
    join(carol, "finance")
    call = make_call(world, "update_customer")
    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert addressed(mailoutbox) == ["bob@example.com"]
    assert "have no e-mail address" in mailoutbox[0].body
    event = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert (event.data["recipients"], event.data["no_approver"]) == (["bob"], "no_address")


def needs_approvals(world: World, tool_name: str, approvals: int) -> None:
    tool = world.tools[tool_name]
    registry_services.update_policy(
        tool=tool, changes={"approvals_required": approvals}, changed_by=world.alice
    )
    tool.refresh_from_db()


def test_a_call_needing_more_approvals_than_people_who_can_approve_it_says_so(
    world: World, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """Two approvals from different people, and bob is the only reviewer who may give one:
    alice reviews the tool too but owns the agent, and a superuser, who may approve any call,
    is never mailed. The call can only expire, so the mail says an admin must act."""
    needs_approvals(world, "update_customer", 2)
    registry_services.grant_review(tool=world.tools["update_customer"], user=world.alice)
    User.objects.create_superuser("root", "root@example.com", "x")
    call = make_call(world, "update_customer")
    assert call.approvals_required == 2

    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert addressed(mailoutbox) == ["bob@example.com"]
    assert "needs an admin before it expires" in mailoutbox[0].subject
    assert (
        "This call needs 2 approvals, but only 1 person granted review of update_customer can "
        "approve it, so its reviewers cannot give it the approvals it needs. An admin must act "
        "before it expires"
    ) in " ".join(mailoutbox[0].body.split())
    assert "A superuser may also approve it (superusers are not mailed unless granted" in " ".join(
        mailoutbox[0].body.split()
    )
    event = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert event.data == {"kind": "new_call", "recipients": ["bob"], "no_approver": "too_few"}


def test_a_call_needing_two_approvals_with_two_who_can_give_them_is_announced_as_usual(
    world: World, dave, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    needs_approvals(world, "update_customer", 2)
    call = make_call(world, "update_customer")
    assert run(django_capture_on_commit_callbacks, notifications.notify_new_calls) == 1
    assert addressed(mailoutbox) == ["bob@example.com", "dave@example.com"]
    assert all("waits for your review" in m.subject for m in mailoutbox)
    assert not any("admin" in m.body for m in mailoutbox)
    event = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert event.data == {"kind": "new_call", "recipients": ["bob", "dave"]}


def test_an_approval_that_stands_counts_towards_the_quorum_in_the_reminder(
    world: World, dave, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    """dave approved: a two-approval call needs one more, and bob can give it; a call of a
    rule asking for three needs two more, and bob alone cannot give them."""
    needs_approvals(world, "update_customer", 2)
    tool = world.tools["update_customer"]
    tool.reminder_after_seconds = 60
    tool.save()
    earlier = timezone.now() - timedelta(minutes=5)
    one_more = make_call(world, "update_customer", created_at=earlier)
    registry_services.update_policy(
        tool=tool,
        changes={"rules": [{"when": "true", "then": "require", "approvals": 3}]},
        changed_by=world.alice,
    )
    tool.refresh_from_db()
    two_more = make_call(world, "update_customer", created_at=earlier)
    assert (one_more.approvals_required, two_more.approvals_required) == (2, 3)
    for call in (one_more, two_more):
        decide(call_id=call.pk, reviewer=dave, verdict="approve")

    assert run(django_capture_on_commit_callbacks, notifications.send_reminders) == 2
    assert addressed(mailoutbox) == ["bob@example.com", "bob@example.com"]
    fine = next(m for m in mailoutbox if f"/approvals/{one_more.pk}/" in m.body)
    assert "still waits for your review" in fine.subject
    assert "admin" not in fine.body
    reminded = AuditEvent.objects.get(call_id=one_more.pk, action="call.reminder_sent")
    assert reminded.data == {"kind": "reminder", "recipients": ["bob"]}

    short = next(m for m in mailoutbox if f"/approvals/{two_more.pk}/" in m.body)
    assert "still needs an admin" in short.subject
    assert (
        "This call needs 3 approvals and has 1, but only 1 more person granted review of "
        "update_customer can approve it"
    ) in " ".join(short.body.split())
    reminded = AuditEvent.objects.get(call_id=two_more.pk, action="call.reminder_sent")
    assert reminded.data == {"kind": "reminder", "recipients": ["bob"], "no_approver": "too_few"}


def test_the_sweeps_queries_do_not_grow_with_the_number_of_reviewers(
    world: World, mailoutbox, django_capture_on_commit_callbacks, settings
) -> None:
    """Whom a mail is for, and whether they could approve the call, is asked of every
    reviewer of each call: by person, that was a query or two for each of them per call, and
    the escalation sweep (which asks it of all the tool's reviewers since it says who may
    approve) made hundreds per run. A call costs the same however many reviewers it has."""
    settings.APPROVALS_ESCALATE_BEFORE_EXPIRY_SECONDS = 600
    needs_team(world, "finance")
    managers = Group.objects.create(name="payments-managers")
    User.objects.create_user("erin", "erin@example.com", "x").groups.add(managers)
    refunds = world.tools["issue_refund"]
    refunds.escalation_group = managers
    refunds.save()
    join(world.bob, "finance")

    def queries_per_run(reviewers: int) -> tuple[int, int]:
        for n in range(User.objects.filter(username__startswith="r-").count(), reviewers):
            person = User.objects.create_user(f"r-{n}", f"r-{n}@example.com", "x")
            join(person, "finance")
            for tool in ("update_customer", "issue_refund"):
                registry_services.grant_review(tool=world.tools[tool], user=person)
        earlier = timezone.now() - timedelta(minutes=55)
        for _ in range(3):  # for end users: their names are matched against the reviewers'
            make_call(world, "update_customer", on_behalf_of="ada@example.com")
            make_call(world, "issue_refund", on_behalf_of="ada@example.com", created_at=earlier)
        counted = []
        for sweep in (notifications.notify_new_calls, notifications.escalate_expiring):
            with CaptureQueriesContext(connection) as queries:
                assert run(django_capture_on_commit_callbacks, sweep) > 0
            counted.append(len(queries.captured_queries))
        return counted[0], counted[1]

    few = queries_per_run(2)
    assert queries_per_run(12) == few
    told = AuditEvent.objects.filter(action="call.reviewers_notified").order_by("-id").first()
    assert told is not None and len(told.data["recipients"]) == 13  # bob and the twelve
