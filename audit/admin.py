from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail is changed by nobody, through the admin or otherwise."""

    list_display = [
        "seq",
        "occurred_at",
        "action",
        "outcome",
        "actor_label",
        "agent_name",
        "tool_name",
    ]
    list_filter = ["action", "outcome", "actor_type"]
    search_fields = ["call_id", "session_id", "agent_name", "tool_name", "actor_label"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
