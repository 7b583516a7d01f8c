"""A new HTTP upstream sends no idempotency header (and so is never re-run by itself) until
an admin names the header its API honours.

Only the model's default and help text change (``sqlmigrate``: no-op): no row is touched.
An upstream registered before keeps the header it has, ``Idempotency-Key`` if it took the
old default, and re-runs as it did; an admin who knows its API ignores that header empties
the field in the admin (audited as ``upstream.changed``). Emptying every such row here
would silently change how their unknown writes are settled (a person instead of a re-run).
Safe for a rolling deploy: Django writes every column on insert, so old and new code each
store the default they know, and the column has no database default.
"""

from django.db import migrations, models

import tools_registry.upstreams.secrets


class Migration(migrations.Migration):
    dependencies = [
        ("tools_registry", "0017_tool_escalation_team_protected"),
    ]

    operations = [
        migrations.AlterField(
            model_name="upstream",
            name="idempotency_header",
            field=models.CharField(
                blank=True,
                default="",
                help_text="HTTP APIs: the header the API honours as an idempotency key (e.g. Idempotency-Key): a repeat of a key gets the first request's answer, never a second effect. Named, each call carries its key in it, and a write whose outcome is unknown (a timeout, a 5xx) is sent again with its key by itself. Empty (for an API that does not honour one, or if unsure): no key is sent and such a write waits for a person on the Needs attention page.",
                max_length=64,
                validators=[tools_registry.upstreams.secrets.valid_idempotency_header],
            ),
        ),
    ]
