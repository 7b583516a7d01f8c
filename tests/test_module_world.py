"""One world for a module (``tests.conftest.module_world``): each test starts from the world as
it was built, whatever the tests before it changed, in the database and in the objects.

These tests run in the order they are written (a file runs in one process, in order)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from audit.models import AuditEvent
from tests.conftest import World
from tools_registry import services as registry_services
from tools_registry.models import Agent, Tool

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]

BUILT: dict[str, object] = {}


def test_a_test_changes_the_world(world: World) -> None:
    BUILT.update(
        agent=world.agent.pk,
        events=AuditEvent.objects.count(),
        users=User.objects.count(),
        enabled=sorted(Tool.objects.filter(enabled=True).values_list("name", flat=True)),
    )
    world.agent.name = "renamed-bot"
    world.agent.save()
    world.tools["send_email"].enabled = False
    world.tools["send_email"].save()
    registry_services.revoke_review(tool=world.tools["issue_refund"], user=world.bob)
    User.objects.create_user("dora", "dora@example.com", "pw-dora")
    assert AuditEvent.objects.count() > BUILT["events"]


def test_the_next_test_finds_the_world_as_built(world: World) -> None:
    assert world.agent.pk == BUILT["agent"], "the same rows: built once for the module"
    assert world.agent.name == "support-bot" and world.tools["send_email"].enabled
    assert Agent.objects.get(pk=world.agent.pk).name == "support-bot"
    assert (
        sorted(Tool.objects.filter(enabled=True).values_list("name", flat=True)) == BUILT["enabled"]
    )
    assert registry_services.revoke_review(tool=world.tools["issue_refund"], user=world.bob)
    assert not User.objects.filter(username="dora").exists()
    assert User.objects.count() == BUILT["users"]
