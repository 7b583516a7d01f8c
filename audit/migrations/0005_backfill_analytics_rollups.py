"""Count the events sealed before the summary existed; the sealer counts every later one."""

from __future__ import annotations

from django.db import migrations


def backfill(apps, schema_editor):  # type: ignore[no-untyped-def]
    # The summary's own code, not historical models: it is derived data, and this is the
    # same computation as `manage.py rebuild_audit_rollups`.
    from audit import chain

    chain.rebuild_rollups()


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_analytics_rollups_and_verification_runs")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True)]
