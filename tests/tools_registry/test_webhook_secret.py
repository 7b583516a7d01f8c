"""An agent's operator can obtain its webhook secret: rotated, shown once, audited."""

from __future__ import annotations

import time
from io import StringIO

import pytest
import standardwebhooks
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from audit.models import AuditEvent
from gateway import webhooks
from tests.conftest import World
from tools_registry.models import Agent
from tools_registry.services import signing_secrets

pytestmark = pytest.mark.django_db


def rotations(agent: Agent) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(action="agent.webhook_secret_rotated", agent_name=agent.name)
    )


def test_the_command_prints_a_new_secret_that_verifies_webhooks(world: World) -> None:
    old = world.agent.webhook_secret
    out = StringIO()
    call_command("rotate_webhook_secret", "support-bot", stdout=out, stderr=StringIO())
    secret = out.getvalue().strip().splitlines()[-1]
    world.agent.refresh_from_db()
    assert secret == world.agent.webhook_secret != old
    assert secret.startswith("whsec_")
    body = b'{"id": "1"}'
    headers = webhooks.sign(signing_secrets(world.agent), "msg_1", int(time.time()), body)
    # The new secret verifies, and the old one still does during the grace period.
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {"id": "1"}
    assert standardwebhooks.Webhook(old).verify(body, headers) == {"id": "1"}
    [event] = rotations(world.agent)
    assert secret not in str(event.data) and old not in str(event.data)
    assert event.data["previous_valid_until"]


def test_the_admin_rotates_only_on_post_and_shows_the_secret_once(world: World) -> None:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    url = f"/admin/tools_registry/agent/{world.agent.pk}/rotate-webhook-secret/"
    before = world.agent.webhook_secret
    page = client.get(url)
    assert page.status_code == 200
    world.agent.refresh_from_db()
    assert world.agent.webhook_secret == before, "looking at the page changes nothing"
    shown = client.post(url)
    world.agent.refresh_from_db()
    assert world.agent.webhook_secret != before
    assert world.agent.webhook_secret in shown.content.decode()
    assert "no-store" in shown["Cache-Control"]
    assert [e.actor_label for e in rotations(world.agent)] == ["root"]


def test_someone_who_may_not_change_agents_gets_403(world: World) -> None:
    staff = User.objects.create_user("sam", password="pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    response = client.post(f"/admin/tools_registry/agent/{world.agent.pk}/rotate-webhook-secret/")
    assert response.status_code == 403
    assert rotations(world.agent) == []
