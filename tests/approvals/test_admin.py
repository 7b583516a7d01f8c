"""Standing approvals in the admin: seen, and revoked (audited), never edited."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals.models import StandingApproval, Status
from tests.approvals.services.test_standing import EMAIL, approve_with, submit
from tests.conftest import World
from tools_registry.models import Tool


def test_a_standing_approval_for_an_earlier_tool_version_cannot_be_revived(world: World) -> None:
    """A standing approval covers only the tool's definition its author saw: the admin's
    form let one type the current version in, and the tool's new calls ran unreviewed."""
    granted = approve_with(world, submit(world), match="any")
    tool = world.tools["send_email"]
    Tool.objects.filter(pk=tool.pk).update(version="changed")
    world.tools["send_email"].refresh_from_db()
    assert submit(world).status == Status.PENDING
    keeper = User.objects.create_user("kim", "kim@example.com", "pw", is_staff=True)
    keeper.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_standingapproval", "change_standingapproval"]
        )
    )
    client = Client()
    client.force_login(keeper)
    page = client.get(f"/admin/approvals/standingapproval/{granted.pk}/change/")
    assert page.status_code == 200
    client.post(
        f"/admin/approvals/standingapproval/{granted.pk}/change/", {"tool_version": "changed"}
    )
    assert StandingApproval.objects.get(pk=granted.pk).tool_version == granted.tool_version
    assert submit(world).status == Status.PENDING


def _admin(username: str = "kim") -> Client:
    keeper = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=True)
    keeper.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_standingapproval", "change_standingapproval"]
        )
    )
    client = Client()
    client.force_login(keeper)
    return client


def test_a_standing_approvals_condition_shows_no_hidden_value_to_those_who_may_not_see_it(
    world: World,
) -> None:
    """The trail masks a standing approval's condition whole: it may quote what a call's
    hidden fields hold (an author who may reveal them can write `args.subject == "..."`).
    The admin showed it as written, not even through the detectors (an address in clear),
    and the standing approvals page, where an admin sees everyone's, masked only what the
    detectors find: a sensitive field's value, seen by people who may not reveal it."""
    from tools_registry import services as registry_services
    from tools_registry.services.grants import grant

    tool = world.tools["send_email"]
    registry_services.update_policy(
        tool=tool, changes={"sensitive_fields": ["subject"]}, changed_by=world.alice
    )
    tool.refresh_from_db()
    grant(tool=tool, permission="reveal_tool_arguments", user=world.bob)
    condition = 'args.subject == "Case 7731 Lovelace" && args.to == "ada@example.com"'
    granted = approve_with(world, submit(world), match="condition", condition=condition)
    admin = _admin()
    for page in (
        admin.get(f"/admin/approvals/standingapproval/{granted.pk}/change/"),
        admin.get("/approvals/standing/"),
    ):
        assert page.status_code == 200
        body = page.content.decode()
        assert "Case 7731" not in body and "ada@example.com" not in body
        assert "[masked:field:" in body
    # Its author wrote it, and may reveal the field: they read it (addresses as reviewers do).
    own = Client()
    own.force_login(world.bob)
    body = own.get("/approvals/standing/").content.decode()
    assert "Case 7731 Lovelace" in body and "a***@example.com" in body
    assert "ada@example.com" not in body


def test_a_standing_approvals_condition_in_the_admin_is_masked_as_reviewers_see_it(
    world: World,
) -> None:
    condition = 'args.to == "ada@example.com"'
    granted = approve_with(world, submit(world), match="condition", condition=condition)
    body = _admin().get(f"/admin/approvals/standingapproval/{granted.pk}/change/")
    assert body.status_code == 200
    text = body.content.decode()
    assert "ada@example.com" not in text and "a***@example.com" in text


def test_the_standing_approvals_list_cannot_spell_out_a_condition(world: World) -> None:
    """The condition is shown masked; a list lookup (?condition__startswith=...) answering
    "1 result" or "0 results" would give it away one character at a time."""
    condition = 'args.to == "ada@example.com"'
    approve_with(world, submit(world), match="condition", condition=condition)
    admin = _admin()
    listed = admin.get("/admin/approvals/standingapproval/")
    assert listed.status_code == 200
    for lookup in ("condition__startswith", "condition__contains", "condition"):
        probe = admin.get("/admin/approvals/standingapproval/", {lookup: 'args.to == "a'})
        assert probe.status_code == 400, lookup


def test_the_standing_approvals_page_costs_the_same_queries_however_many_it_lists(
    world: World,
) -> None:
    """An admin sees everyone's standing approvals, each condition as they may read it
    (whether they may reveal its tool's arguments): asked once for the page, not for every
    row (it lists up to 200)."""
    from tools_registry import services as registry_services
    from tools_registry.services.grants import grant

    tool = world.tools["send_email"]
    registry_services.update_policy(
        tool=tool, changes={"sensitive_fields": ["subject"]}, changed_by=world.alice
    )
    tool.refresh_from_db()
    admin = _admin()
    for revealer in (world.bob, User.objects.get(username="kim")):
        grant(tool=tool, permission="reveal_tool_arguments", user=revealer)
    subjects: list[str] = []

    def grant_standing(count: int) -> None:
        for _ in range(count):
            subjects.append(f"Case {uuid.uuid4().hex[:8]}")
            call = submit(world, {**EMAIL, "subject": subjects[-1]})
            condition = f'args.subject == "{subjects[-1]}"'
            approve_with(world, call, match="condition", condition=condition)

    def queries_for_page() -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            page = admin.get("/approvals/standing/")
        assert page.status_code == 200
        return len(captured.captured_queries), page.content.decode()

    grant_standing(2)
    queries_for_page()  # warm-up: the first request of a session touches it
    few, _ = queries_for_page()
    grant_standing(8)
    many, body = queries_for_page()
    assert all(subject in body for subject in subjects)  # kim may reveal them
    assert many == few, f"2 standing approvals: {few} queries, 10: {many}"


def test_a_standing_approvals_page_gives_no_hash_to_try_a_masked_value_against(
    world: World,
) -> None:
    """A standing approval for exactly the same arguments keeps their SHA-256, of the
    canonical JSON of the tool, its version and the arguments: all shown but the masked
    parts (the audit trail shows ``a***@example.com``). The admin showed that bare hash, so
    whoever may view standing approvals tried guesses of the address offline, and a list
    lookup (?arguments_hash=...) answered each guess online. It is shown keyed, as the
    trail shows the call's (the two still compare), and no lookup is answered."""
    from approvals.guards import arguments_hash
    from audit.masking import keyed_digest

    granted = approve_with(world, submit(world), match="same")
    tool = world.tools["send_email"]
    guessed = arguments_hash(
        tool_name=tool.name, tool_version=granted.tool_version, arguments=EMAIL
    )
    assert guessed == granted.arguments_hash  # the guess an outsider can check
    admin = _admin()
    body = admin.get(f"/admin/approvals/standingapproval/{granted.pk}/change/").content.decode()
    assert granted.arguments_hash not in body
    assert keyed_digest(granted.arguments_hash) in body
    probe = admin.get("/admin/approvals/standingapproval/", {"arguments_hash": guessed})
    assert probe.status_code == 400
    # Nor does its form take one (it stays what the approval bound).
    admin.post(f"/admin/approvals/standingapproval/{granted.pk}/change/", {"arguments_hash": "0"})
    assert StandingApproval.objects.get(pk=granted.pk).arguments_hash == granted.arguments_hash
