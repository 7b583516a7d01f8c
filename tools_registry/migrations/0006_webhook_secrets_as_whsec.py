"""Existing webhook secrets in the Standard Webhooks form, with the same key.

A secret made before was used as its own UTF-8 bytes for the HMAC key; ``whsec_`` + the
base64 of those bytes is the same key in the form the Standard Webhooks libraries read, so
every receiver that verifies with the new header format needs no new secret from an admin.
"""

import base64

from django.db import migrations


def to_whsec(apps, schema_editor):
    Agent = apps.get_model("tools_registry", "Agent")
    kept = Agent.objects.exclude(webhook_secret__startswith="whsec_")  # noqa: S106
    for agent in kept.only("webhook_secret"):
        agent.webhook_secret = "whsec_" + base64.b64encode(agent.webhook_secret.encode()).decode()
        agent.save(update_fields=["webhook_secret"])


class Migration(migrations.Migration):
    dependencies = [
        ("tools_registry", "0005_standard_webhook_secrets"),
    ]

    operations = [migrations.RunPython(to_whsec, migrations.RunPython.noop)]
