"""Drop the 0 s "waits" of calls approved as they arrived (by a policy rule or a standing
approval) from the approval latency: nobody waited for a reviewer. The sealer no longer
counts them (``audit.rollups.AUTOMATIC``)."""

from __future__ import annotations

from django.db import migrations


def forget(apps, schema_editor):  # type: ignore[no-untyped-def]
    AuditEvent = apps.get_model("audit", "AuditEvent")
    DecisionLatency = apps.get_model("audit", "DecisionLatency")
    automatic = AuditEvent.objects.filter(
        action="call.approved", data__by__in=["rule", "standing_approval"]
    ).values("call_id")
    DecisionLatency.objects.filter(call_id__in=automatic).delete()


class Migration(migrations.Migration):
    dependencies = [("audit", "0006_verificationrun_progressed_at")]

    operations = [migrations.RunPython(forget, migrations.RunPython.noop, elidable=True)]
