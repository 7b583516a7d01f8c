from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db import models

from core.json_values import json_problem
from sandbox.models import (
    Customer,
    Effect,
    HelpArticle,
    OutboxMessage,
    Payment,
    Refund,
    SandboxFault,
)
from tools_registry.admin import PrettyJSONField

admin.site.register([Customer, HelpArticle, OutboxMessage, Payment, Refund])


class StorableJSONField(PrettyJSONField):
    """A JSON field holding only what jsonb stores. Python's reader takes NaN, 1e400
    (infinity), a NUL and an unpaired surrogate, which PostgreSQL refuses: the save was a
    500. (The registry's forms check their JSON fields each with its own message.)"""

    def validate(self, value: Any) -> None:
        super().validate(value)
        if problem := json_problem(value):
            raise forms.ValidationError(f"This JSON cannot be stored: {problem}.", code="invalid")


@admin.register(Effect)
class EffectAdmin(admin.ModelAdmin):
    formfield_overrides = {models.JSONField: {"form_class": StorableJSONField}}
    list_display = ["tool", "idempotency_key", "at", "deliveries"]
    list_filter = ["tool"]


@admin.register(SandboxFault)
class SandboxFaultAdmin(admin.ModelAdmin):
    list_display = ["point", "tool", "tag", "delay_seconds", "hold", "remaining", "hits"]
