"""The secret an agent verifies Countersign's webhooks with."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.log import record
from tools_registry.models import Agent, _new_webhook_secret


@transaction.atomic
def rotate_webhook_secret(*, agent: Agent, rotated_by: Any) -> str:
    """Give the agent a new webhook secret and return it, to be shown once.

    Webhooks are signed with it from the next delivery on, and also with the old secret
    for ``WEBHOOK_SECRET_GRACE_SECONDS`` (both signatures in ``webhook-signature``), so a
    receiver keeps verifying while it switches to the new one. The secret itself is never
    written to the trail, only that it changed and how long the old one stays valid.
    """
    locked = Agent.objects.select_for_update().get(pk=agent.pk)
    grace = settings.WEBHOOK_SECRET_GRACE_SECONDS
    locked.previous_webhook_secret = locked.webhook_secret if grace > 0 else ""
    locked.previous_webhook_secret_until = (
        timezone.now() + timedelta(seconds=grace) if grace > 0 else None
    )
    locked.webhook_secret = _new_webhook_secret()
    locked.save(
        update_fields=["webhook_secret", "previous_webhook_secret", "previous_webhook_secret_until"]
    )
    until = locked.previous_webhook_secret_until
    record(
        action="agent.webhook_secret_rotated",
        actor=rotated_by,
        agent=locked,
        data={"previous_valid_until": until.isoformat() if until else None},
    )
    return locked.webhook_secret


def signing_secrets(agent: Agent) -> list[str]:
    """The secrets a webhook of ``agent`` is signed with now: the current one, and the
    previous one while its grace period lasts."""
    found = [agent.webhook_secret]
    until = agent.previous_webhook_secret_until
    if agent.previous_webhook_secret and until is not None and until > timezone.now():
        found.append(agent.previous_webhook_secret)
    return found
