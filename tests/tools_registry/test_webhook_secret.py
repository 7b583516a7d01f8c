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
from django.test import Client, override_settings
from django.utils import timezone

from audit.models import AuditEvent
from gateway import webhooks
from tests.conftest import World
from tests.tools_registry.conftest import admin_form_data
from tools_registry.models import Agent
from tools_registry.services import rotate_webhook_secret, signing_secrets

pytestmark = pytest.mark.django_db


def rotations(agent: Agent) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(
            action="agent.webhook_secret_rotated", agent_name=agent.name
        ).order_by("pk")
    )


def verifies(secret: str, agent: Agent) -> bool:
    """Whether a receiver holding ``secret`` accepts a webhook of ``agent`` sent now, by the
    real Standard Webhooks verifier."""
    agent.refresh_from_db()
    body = b'{"id": "1"}'
    headers = webhooks.sign(signing_secrets(agent), "msg_1", int(time.time()), body)
    try:
        standardwebhooks.Webhook(secret).verify(body, headers)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


def rotate_by_command(*flags: str) -> tuple[str, str]:
    """The new secret (stdout's last line) and what the command told the admin (stderr)."""
    out, err = StringIO(), StringIO()
    call_command("rotate_webhook_secret", "support-bot", *flags, stdout=out, stderr=err)
    return out.getvalue().strip().splitlines()[-1], err.getvalue()


def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def rotation_url(agent: Agent) -> str:
    return f"/admin/tools_registry/agent/{agent.pk}/rotate-webhook-secret/"


def page_text(response: Any) -> str:
    """The page's HTML with its white space runs made single spaces."""
    return " ".join(response.content.decode().split())


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
    assert event.data["old_secrets_signing"] == 1
    assert event.data["expired_old_now"] is False


@override_settings(WEBHOOK_SECRET_GRACE_SECONDS=3600)
def test_a_receiver_still_on_the_first_secret_verifies_after_two_rotations(
    world: World,
) -> None:
    """The second rotation within the grace period dropped the first secret at once: a
    receiver that had not switched yet failed every webhook from then on."""
    first = world.agent.webhook_secret
    second, _ = rotate_by_command()
    third, told = rotate_by_command()
    assert [verifies(s, world.agent) for s in (first, second, third)] == [True, True, True]
    assert "old secrets still verify until" in told
    event = rotations(world.agent)[-1]
    assert event.data["old_secrets_signing"] == 2
    assert len(event.data["old_secrets_valid_until"]) == 2
    assert [s for s in (first, second, third) if s in str(event.data)] == []


@override_settings(WEBHOOK_SECRET_GRACE_SECONDS=3600)
def test_the_command_expires_every_old_secret_now_when_told_it_leaked(world: World) -> None:
    first = world.agent.webhook_secret
    second, _ = rotate_by_command()
    third, _ = rotate_by_command()
    fourth, told = rotate_by_command("--expire-old-now")
    assert [verifies(s, world.agent) for s in (first, second, third)] == [False] * 3
    assert verifies(fourth, world.agent)
    assert signing_secrets(world.agent) == [fourth]
    assert "expired now" in told
    assert rotations(world.agent)[-1].data == {
        "expired_old_now": True,
        "old_secrets_signing": 0,
        "old_secrets_valid_until": [],
        "old_secrets_ended_early": 2,
    }


@override_settings(WEBHOOK_SECRET_GRACE_SECONDS=3600)
def test_past_three_old_secrets_the_oldest_stops_signing_and_the_admin_is_told(
    world: World,
) -> None:
    client = admin_client()
    url = rotation_url(world.agent)
    secrets = [world.agent.webhook_secret]
    for _ in range(3):
        client.post(url, {"old_secrets": "grace"})
        world.agent.refresh_from_db()
        secrets.append(world.agent.webhook_secret)
    page = page_text(client.get(url))
    assert "3 old secrets" in page and "ends the oldest one" in page
    assert not [secret for secret in secrets if secret in page], "no secret on the page"
    shown = page_text(client.post(url, {"old_secrets": "grace"}))
    world.agent.refresh_from_db()
    newest = world.agent.webhook_secret
    assert newest in shown and not [secret for secret in secrets if secret in shown]
    assert "1 older secret stopped verifying now" in shown
    assert [verifies(s, world.agent) for s in [*secrets, newest]] == [False] + [True] * 4
    assert len(signing_secrets(world.agent)) == 4
    assert rotations(world.agent)[-1].data["old_secrets_ended_early"] == 1


@override_settings(WEBHOOK_SECRET_GRACE_SECONDS=3600)
def test_the_admin_expires_the_old_secrets_now_when_they_leaked(world: World) -> None:
    client = admin_client()
    url = rotation_url(world.agent)
    first = world.agent.webhook_secret
    client.post(url, {"old_secrets": "grace"})
    world.agent.refresh_from_db()
    second = world.agent.webhook_secret
    form = page_text(client.get(url))
    assert "Expire it now (it leaked)" in form and "1 old secret still verifies" in form
    assert second not in form and first not in form
    shown = page_text(client.post(url, {"old_secrets": "now"}))
    world.agent.refresh_from_db()
    assert world.agent.webhook_secret in shown
    assert "The old secret stopped verifying now, and so did 1 older secret" in shown
    assert second not in shown and first not in shown
    assert [verifies(s, world.agent) for s in (first, second)] == [False, False]
    assert verifies(world.agent.webhook_secret, world.agent)
    event = rotations(world.agent)[-1]
    assert (event.data["expired_old_now"], event.actor_label) == (True, "root")


def test_a_rotation_without_a_choice_for_the_old_secret_changes_nothing(world: World) -> None:
    client = admin_client()
    before = world.agent.webhook_secret
    page = client.post(rotation_url(world.agent), {"old_secrets": "someday"})
    assert page.status_code == 200
    assert "Select a valid choice" in page.content.decode()
    world.agent.refresh_from_db()
    assert world.agent.webhook_secret == before
    assert rotations(world.agent) == []


def test_an_old_secret_past_its_own_grace_period_does_not_sign_again(world: World) -> None:
    first = world.agent.webhook_secret
    second, _ = rotate_by_command()
    Agent.objects.filter(pk=world.agent.pk).update(
        previous_webhook_secrets=[{"secret": first, "until": timezone.now().isoformat()}]
    )
    third, _ = rotate_by_command()
    assert [verifies(s, world.agent) for s in (first, second, third)] == [False, True, True]
    assert rotations(world.agent)[-1].data["old_secrets_ended_early"] == 0


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
    shown = client.post(url, {"old_secrets": "grace"})
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
    lookups = [f"webhook_secret__startswith={secret[:8]}", f"webhook_secret={secret}"]
    lookups += [
        f"previous_webhook_secrets__0__secret__startswith={secret[:8]}",
        f"previous_webhook_secrets__contains=[{{%22secret%22:%22{secret}%22}}]",
        "previous_webhook_secrets__0__until__gt=2000",
    ]
    for lookup in lookups:
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
    assert agent.webhook_secret == new[0].secret
    assert [old["secret"] for old in agent.previous_webhook_secrets] == [old]
