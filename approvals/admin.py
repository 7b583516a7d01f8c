"""Standing approvals in the admin: every one, by tool and agent, revocable by an admin.
Reviewers grant them with an approval; nobody creates or edits one here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from approvals import display
from approvals.models import StandingApproval
from approvals.services import standing
from audit.masking import keyed_digest
from core.admin_lookups import SecretsNotLookedUp


@admin.register(StandingApproval)
class StandingApprovalAdmin(SecretsNotLookedUp, admin.ModelAdmin):
    list_display = [
        "id",
        "tool",
        "agent",
        "match",
        "uses",
        "max_uses",
        "expires_at",
        "granted_by",
        "revoked_at",
    ]
    list_filter = ["tool", "agent", "match"]
    readonly_fields = [
        "tool",
        "agent",
        "granted_by",
        "source_call",
        "match",
        "tool_version",  # what it covers: typed in, it would cover a definition nobody saw
        "shown_arguments_hash",
        "shown_condition",
        "max_uses",
        "uses",
        "created_at",
        "expires_at",
        "revoked_at",
        "revoked_by",
    ]
    # Shown as anyone may read it (``display.condition``), never as written: the trail masks
    # it whole, and it may quote a hidden field's value or an address.
    # Nor the bare SHA-256 of the arguments it covers: all of the canonical JSON hashed but
    # the masked values is on view (the tool, its version, the trail's masked arguments), so
    # whoever may view this page tried guesses of a masked value against it. Shown keyed, as
    # the trail shows a call's (``keyed_digest``): the two still compare.
    exclude = ["condition", "arguments_hash"]
    # Nor spelt out, or a guess answered, by list lookups (?condition__startswith=).
    secret_fields = ("condition", "arguments_hash")
    actions = ["revoke"]

    @admin.display(description="Arguments hash")
    def shown_arguments_hash(self, obj: StandingApproval) -> str:
        return keyed_digest(obj.arguments_hash) or "—"

    @admin.display(description="Condition")
    def shown_condition(self, obj: StandingApproval) -> str:
        return display.condition(obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the calls it approved name it

    @admin.action(description="Revoke the selected standing approvals")
    def revoke(self, request: HttpRequest, queryset: QuerySet[StandingApproval]) -> None:
        revoked = 0
        for item in queryset:
            try:
                standing.revoke(standing_id=item.pk, person=request.user)
            except standing.StandingRefused as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                revoked += 1
        self.message_user(request, f"Revoked {revoked} standing approval(s).")
