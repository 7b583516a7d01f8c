from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_backfill_analytics_rollups")]

    operations = [
        migrations.AddField(
            model_name="verificationrun",
            name="progressed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
