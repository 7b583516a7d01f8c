"""The one previous webhook secret, still in its grace period, becomes the first of the list.

A receiver that still verifies with it when this runs keeps verifying until the moment the
rotation promised; one whose grace period is over is left behind, as it signs nothing.
"""

from django.db import migrations
from django.utils import timezone


def to_list(apps, schema_editor):
    Agent = apps.get_model("tools_registry", "Agent")
    graced = Agent.objects.exclude(previous_webhook_secret="").filter(
        previous_webhook_secret_until__gt=timezone.now()
    )
    for agent in graced.only("previous_webhook_secret", "previous_webhook_secret_until"):
        agent.previous_webhook_secrets = [
            {
                "secret": agent.previous_webhook_secret,
                "until": agent.previous_webhook_secret_until.isoformat(),
            }
        ]
        agent.save(update_fields=["previous_webhook_secrets"])


def to_one(apps, schema_editor):
    """Back to one slot: the newest old secret keeps its grace; older ones end."""
    Agent = apps.get_model("tools_registry", "Agent")
    for agent in Agent.objects.exclude(previous_webhook_secrets=[]).only(
        "previous_webhook_secrets"
    ):
        newest = agent.previous_webhook_secrets[0]
        agent.previous_webhook_secret = newest["secret"]
        agent.previous_webhook_secret_until = newest["until"]
        agent.save(update_fields=["previous_webhook_secret", "previous_webhook_secret_until"])


class Migration(migrations.Migration):
    dependencies = [
        ("tools_registry", "0013_agent_previous_webhook_secrets"),
    ]

    operations = [migrations.RunPython(to_list, to_one)]
