from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tools_registry", "0012_jwks_over_tls"),
    ]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="previous_webhook_secrets",
            field=models.JSONField(blank=True, db_default=[], default=list, editable=False),
        ),
        # The old column fills itself: this release's code no longer knows it (0015), and
        # the column stays until a later release drops it, for the release before to read.
        migrations.AlterField(
            model_name="agent",
            name="previous_webhook_secret",
            field=models.CharField(blank=True, db_default="", editable=False, max_length=100),
        ),
    ]
