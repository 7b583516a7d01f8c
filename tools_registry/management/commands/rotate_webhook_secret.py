from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tools_registry.models import Agent
from tools_registry.services import MAX_OLD_WEBHOOK_SECRETS, Rotation, rotate_webhook_secret


class Command(BaseCommand):
    help = (
        "Give an agent a new webhook signing secret (whsec_...). The secret is printed once, "
        "alone on the last line. Webhooks carry the old secret's signature too for "
        "WEBHOOK_SECRET_GRACE_SECONDS, beside those of older secrets still in their grace "
        f"period (at most {MAX_OLD_WEBHOOK_SECRETS}); --expire-old-now ends them all at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name.")
        parser.add_argument(
            "--expire-old-now",
            action="store_true",
            help="The old secret leaked: it, and every older secret still in its grace "
            "period, stop verifying at once (webhooks fail to verify until the agent has "
            "the new secret).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            raise CommandError(f"No agent named {options['agent']!r}.")
        rotation = rotate_webhook_secret(
            agent=agent, rotated_by=None, expire_old_now=options["expire_old_now"]
        )
        self.stderr.write(f"New webhook secret for {agent.name} ({_old_secrets(rotation)}).")
        if rotation.ended_early and not rotation.expired_old_now:
            self.stderr.write(
                f"{rotation.ended_early} older secret(s) stopped verifying now, before the end "
                f"of their grace period: at most {MAX_OLD_WEBHOOK_SECRETS} old secrets sign."
            )
        self.stderr.write("It is shown once:")
        self.stdout.write(rotation.secret)


def _old_secrets(rotation: Rotation) -> str:
    if rotation.expired_old_now:
        older = f" and {rotation.ended_early} older one(s)" if rotation.ended_early else ""
        return f"the old secret{older} expired now: only the new one verifies"
    if not rotation.old_secrets_until:
        return "the old one no longer verifies"
    untils = ", ".join(until.isoformat() for until in rotation.old_secrets_until)
    return f"old secrets still verify until {untils}, the one just replaced first"
