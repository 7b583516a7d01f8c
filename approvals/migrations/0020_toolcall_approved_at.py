from django.db import migrations, models


class Migration(migrations.Migration):
    # When a call was last approved: the re-send sweep waits longer between copies of a
    # call's task the longer it has waited (sweeps.resend_stalled_approved). A column that
    # may be null, without a default: PostgreSQL adds it without rewriting the table.
    dependencies = [
        ("approvals", "0019_call_unknown_unescalated_idx"),
    ]

    operations = [
        migrations.AddField(
            model_name="toolcall",
            name="approved_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
