"""The one-slot columns leave the model, not the database: the release before reads them with
every agent it loads (every agent's request among them), so dropping them here would fail
its requests from ``migrate`` until its processes are replaced. They stay, unused, with the
defaults 0013 gave them, until a later release drops them."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tools_registry", "0014_carry_previous_webhook_secret"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="agent", name="previous_webhook_secret"),
                migrations.RemoveField(model_name="agent", name="previous_webhook_secret_until"),
            ],
            database_operations=[],
        )
    ]
