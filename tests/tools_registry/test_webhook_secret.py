"""An agent's operator can obtain its webhook secret: rotated, shown once, audited."""

from __future__ import annotations

import threading
import time
from io import StringIO
from typing import Any

import pytest
import standardwebhooks
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client

from audit.models import AuditEvent
from gateway import webhooks
from tests.conftest import World
from tests.tools_registry.conftest import admin_form_data
from tools_registry.models import Agent
from tools_registry.services import rotate_webhook_secret, signing_secrets

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


def test_whoever_may_see_the_agents_list_cannot_spell_out_a_webhook_secret(
    world: World,
) -> None:
    """The list filtered ?webhook_secret__startswith=... said "1 result" or "0 results":
    one character at a time, an operator who may only stop agents read the secret, and
    could sign webhooks the agent takes for Countersign's."""
    from django.contrib.auth.models import Permission

    operator = User.objects.create_user("olga", password="pw", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="stop_agent"))
    client = Client()
    client.force_login(operator)
    secret = world.agent.webhook_secret
    assert client.get("/admin/tools_registry/agent/").status_code == 200
    for field in ("webhook_secret", "previous_webhook_secret"):
        for lookup in (f"{field}__startswith={secret[:8]}", f"{field}={secret}"):
            response = client.get(f"/admin/tools_registry/agent/?{lookup}")
            assert response.status_code == 400, lookup
    # Nor through the tokens' list, by the agent a token belongs to.
    root = User.objects.create_superuser("root", "root@example.com", "pw-root")
    client.force_login(root)
    response = client.get(f"/admin/tools_registry/agenttoken/?agent__webhook_secret={secret}")
    assert response.status_code == 400
    assert client.get("/admin/tools_registry/agenttoken/?secret_hash__gt=0").status_code == 400
    assert client.get("/admin/tools_registry/upstream/?headers_encrypted__gt=a").status_code == 400
    assert client.get("/admin/tools_registry/agent/?enabled__exact=1").status_code == 200


def test_an_admin_edit_posted_while_a_rotation_commits_keeps_the_new_secret(
    live_world: World,
) -> None:
    """The edit's page is read before the rotation commits and saved after it (it waits on
    the agent's row): saving every field wrote the old secret back, and the new one, shown
    once and put in the agent's configuration, verified nothing."""
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    url = f"/admin/tools_registry/agent/{live_world.agent.pk}/change/"
    data = admin_form_data(client.get(url))
    data["max_rounds_per_session"] = 4
    old = live_world.agent.webhook_secret
    rotated, release, new = threading.Event(), threading.Event(), []

    def rotate() -> None:
        try:
            with transaction.atomic():
                new.append(rotate_webhook_secret(agent=live_world.agent, rotated_by=admin))
                rotated.set()
                release.wait(30)
        finally:
            connections.close_all()

    def edit() -> None:
        try:
            answers.append(client.post(url, data))
        finally:
            connections.close_all()

    answers: list[Any] = []
    rotator = threading.Thread(target=rotate)
    rotator.start()
    assert rotated.wait(10)
    editor = threading.Thread(target=edit)
    editor.start()
    editor.join(1.0)
    assert editor.is_alive(), "the edit waits on the agent's row while the rotation is under way"
    release.set()
    rotator.join(10)
    editor.join(10)
    assert answers[0].status_code == 302
    agent = Agent.objects.get(pk=live_world.agent.pk)
    assert agent.max_rounds_per_session == 4
    assert (agent.webhook_secret, agent.previous_webhook_secret) == (new[0], old)
