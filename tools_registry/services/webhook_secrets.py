"""The secret an agent verifies Countersign's webhooks with."""

from __future__ import annotations

import secrets
from typing import Any

from django.db import transaction

from audit.log import record
from tools_registry.models import Agent


@transaction.atomic
def rotate_webhook_secret(*, agent: Agent, rotated_by: Any) -> str:
    """Give the agent a new webhook secret and return it, to be shown once.

    Webhooks are signed with it from the next delivery on; the old secret stops verifying
    at once. The secret itself is never written to the trail, only that it changed.
    """
    locked = Agent.objects.select_for_update().get(pk=agent.pk)
    locked.webhook_secret = secrets.token_urlsafe(32)
    locked.save(update_fields=["webhook_secret"])
    record(action="agent.webhook_secret_rotated", actor=rotated_by, agent=locked, data={})
    return locked.webhook_secret
