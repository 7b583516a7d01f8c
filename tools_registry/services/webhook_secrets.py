"""The secret an agent verifies Countersign's webhooks with, and the old ones that still sign.

A rotation replaces the secret. Routinely, the one replaced keeps signing for
``WEBHOOK_SECRET_GRACE_SECONDS`` beside the new one, and so does every earlier one still in
its own grace period: a receiver that has not switched yet keeps verifying however many
rotations happen meanwhile. At most ``MAX_OLD_WEBHOOK_SECRETS`` old secrets sign; past that
the oldest ends early, and the rotation says so. After a leak the admin expires the old
secrets now instead: from that moment only the new secret signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.log import record
from tools_registry.models import Agent, _new_webhook_secret

# Each old secret adds a signature (about 50 bytes) to every webhook's header and an HMAC
# to its sending; three cover a day with a few rotations in it.
MAX_OLD_WEBHOOK_SECRETS = 3


@dataclass(frozen=True)
class Rotation:
    """What a rotation did. ``secret`` is shown once and never stored anywhere else."""

    secret: str
    # Until when each old secret still signs, newest first.
    old_secrets_until: list[datetime]
    # Old secrets that were still in their grace period and stopped signing now: all of
    # them when ``expired_old_now``, otherwise the oldest past ``MAX_OLD_WEBHOOK_SECRETS``.
    ended_early: int
    expired_old_now: bool


@transaction.atomic
def rotate_webhook_secret(
    *, agent: Agent, rotated_by: Any, expire_old_now: bool = False
) -> Rotation:
    """Give the agent a new webhook secret; the returned rotation holds it, to be shown once.

    Webhooks are signed with it from the next delivery on. Unless ``expire_old_now`` (the
    old secret leaked), the secret it replaces also signs for
    ``WEBHOOK_SECRET_GRACE_SECONDS``, and every older one still in its grace period goes on
    signing until its own end, at most ``MAX_OLD_WEBHOOK_SECRETS`` of them. The trail
    records that the secret changed, until when old secrets sign and how many ended early,
    never a secret.
    """
    locked = Agent.objects.select_for_update().get(pk=agent.pk)
    now = timezone.now()
    still_valid = _unexpired(locked, now)
    if expire_old_now:
        kept, ended_early = [], len(still_valid)
    else:
        grace = settings.WEBHOOK_SECRET_GRACE_SECONDS
        replaced = [(locked.webhook_secret, now + timedelta(seconds=grace))] if grace > 0 else []
        kept = (replaced + still_valid)[:MAX_OLD_WEBHOOK_SECRETS]
        ended_early = len(replaced) + len(still_valid) - len(kept)
    locked.webhook_secret = _new_webhook_secret()
    locked.previous_webhook_secrets = [
        {"secret": secret, "until": until.isoformat()} for secret, until in kept
    ]
    locked.save(update_fields=["webhook_secret", "previous_webhook_secrets"])
    rotation = Rotation(
        secret=locked.webhook_secret,
        old_secrets_until=[until for _, until in kept],
        ended_early=ended_early,
        expired_old_now=expire_old_now,
    )
    record(
        action="agent.webhook_secret_rotated",
        actor=rotated_by,
        agent=locked,
        data={
            "expired_old_now": expire_old_now,
            "old_secrets_signing": len(kept),
            "old_secrets_valid_until": [until.isoformat() for _, until in kept],
            "old_secrets_ended_early": ended_early,
        },
    )
    return rotation


def signing_secrets(agent: Agent) -> list[str]:
    """The secrets a webhook of ``agent`` is signed with now: the current one, then every
    old one whose grace period lasts, newest first."""
    return [agent.webhook_secret, *(secret for secret, _ in _unexpired(agent, timezone.now()))]


def old_secrets_valid_until(agent: Agent) -> list[datetime]:
    """Until when each old secret of ``agent`` still signs, newest first (no secret)."""
    return [until for _, until in _unexpired(agent, timezone.now())]


def _unexpired(agent: Agent, now: datetime) -> list[tuple[str, datetime]]:
    found = []
    for entry in agent.previous_webhook_secrets:
        until = datetime.fromisoformat(entry["until"])
        if entry["secret"] and until > now:
            found.append((entry["secret"], until))
    return found
