from __future__ import annotations

from django.contrib import admin

from sandbox.models import (
    Customer,
    Effect,
    HelpArticle,
    OutboxMessage,
    Payment,
    Refund,
    SandboxFault,
)

admin.site.register([Customer, HelpArticle, OutboxMessage, Payment, Refund])


@admin.register(Effect)
class EffectAdmin(admin.ModelAdmin):
    list_display = ["tool", "idempotency_key", "at", "deliveries"]
    list_filter = ["tool"]


@admin.register(SandboxFault)
class SandboxFaultAdmin(admin.ModelAdmin):
    list_display = ["point", "tool", "tag", "delay_seconds", "hold", "remaining", "hits"]
