"""The migration from one previous webhook secret to a list keeps a receiver verifying: the
old secret still in its grace period when it runs signs on until the moment promised."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from tests.support.migrations import migrate
from tools_registry.models import Agent
from tools_registry.services import signing_secrets

pytestmark = pytest.mark.django_db(transaction=True)

ONE_SLOT = [("tools_registry", "0013_agent_previous_webhook_secrets")]


def test_a_previous_secret_in_its_grace_period_is_carried_into_the_list(
    latest: list[tuple[str, str]],
) -> None:
    apps = migrate(ONE_SLOT)
    owner = apps.get_model("auth", "User").objects.create(username="olivia")
    old_agent = apps.get_model("tools_registry", "Agent")
    until = timezone.now() + timedelta(hours=5)
    graced = old_agent.objects.create(
        name="graced",
        owner=owner,
        previous_webhook_secret="whsec_c2VjcmV0LW9uZQ==",
        previous_webhook_secret_until=until,
    )
    old_agent.objects.create(
        name="lapsed",
        owner=owner,
        previous_webhook_secret="whsec_c2VjcmV0LXR3bw==",
        previous_webhook_secret_until=(until_lapsed := timezone.now() - timedelta(seconds=1)),
    )
    old_agent.objects.create(name="never-rotated", owner=owner)

    migrate(latest)

    agent = Agent.objects.get(name="graced")
    assert agent.previous_webhook_secrets == [
        {"secret": "whsec_c2VjcmV0LW9uZQ==", "until": until.isoformat()}
    ]
    assert signing_secrets(agent) == [graced.webhook_secret, "whsec_c2VjcmV0LW9uZQ=="]
    assert Agent.objects.get(name="lapsed").previous_webhook_secrets == []
    assert Agent.objects.get(name="never-rotated").previous_webhook_secrets == []
    # The release before reads the one slot with every agent it loads, while a rollout
    # replaces its processes: the columns stay, and fill themselves for agents made now.
    Agent.objects.create(name="made-after", owner=User.objects.create(username="nadia"))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, previous_webhook_secret, previous_webhook_secret_until"
            " FROM tools_registry_agent ORDER BY name"
        )
        assert cursor.fetchall() == [
            ("graced", "whsec_c2VjcmV0LW9uZQ==", until),
            ("lapsed", "whsec_c2VjcmV0LXR3bw==", until_lapsed),
            ("made-after", "", None),
            ("never-rotated", "", None),
        ]


def test_migrating_back_keeps_the_newest_old_secret_in_the_one_slot(
    latest: list[tuple[str, str]],
) -> None:
    until = timezone.now() + timedelta(hours=5)
    Agent.objects.create(
        name="rotated-twice",
        owner=User.objects.create(username="olivia"),
        previous_webhook_secrets=[
            {"secret": "whsec_bmV3ZXI=", "until": until.isoformat()},
            {"secret": "whsec_b2xkZXI=", "until": (until - timedelta(hours=1)).isoformat()},
        ],
    )
    apps = migrate(ONE_SLOT)
    agent = apps.get_model("tools_registry", "Agent").objects.get(name="rotated-twice")
    assert (agent.previous_webhook_secret, agent.previous_webhook_secret_until) == (
        "whsec_bmV3ZXI=",
        until,
    )
