from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class SsoIdentity(models.Model):
    """Who a person is at the single sign-on provider: its ``sub`` claim, which a provider
    never reassigns. The name it shows (``preferred_username``) is not: at some providers
    people choose it, and two people may hold it in turn. A sign-in finds its account
    through this link only; a name alone never opens an account it was not linked to."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity"
    )
    subject = models.CharField(max_length=255, unique=True)
    linked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"

    def __str__(self) -> str:
        return f"{self.user} = {self.subject}"
