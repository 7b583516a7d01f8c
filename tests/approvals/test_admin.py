"""Standing approvals in the admin: seen, and revoked (audited), never edited."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User
from django.test import Client

from approvals.models import StandingApproval, Status
from tests.approvals.services.test_standing import approve_with, submit
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
