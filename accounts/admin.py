"""People in the admin: Django's user admin, audited where it widens who may review what."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.http import HttpRequest

from accounts.models import SsoIdentity
from tools_registry.services.grants import record_access_change

admin.site.unregister(User)


class SsoIdentityInline(admin.StackedInline):
    """Whom the account belongs to at the single sign-on provider, shown only: a link is
    made at a first sign-in or on purpose with ``manage.py link_sso`` (audited)."""

    model = SsoIdentity
    fields = readonly_fields = ("subject", "linked_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(User)
class AuditedUserAdmin(UserAdmin):
    """Django's user admin, auditing what changes whose calls a person may review: joining
    a team gives its grants, and a superuser reviews every tool."""

    inlines = (SsoIdentityInline,)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        user = form.instance
        # The form's initial values are what the person had before this save.
        initial = form.initial if change else {}
        before = {
            "groups": sorted(g.name for g in initial.get("groups", [])),
            "is_active": initial.get("is_active", True),
            "is_staff": initial.get("is_staff", False),
            "is_superuser": initial.get("is_superuser", False),
        }
        super().save_related(request, form, formsets, change)
        record_access_change(user=user, before=before, changed_by=request.user)
