from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from tools_registry.models import Upstream
from tools_registry.services.upstreams import reencrypt_headers
from tools_registry.upstreams.secrets import SecretsUnreadable


class Command(BaseCommand):
    help = (
        "Encrypt every upstream's stored headers again with the first key of "
        "UPSTREAM_SECRETS_KEY, so the keys after it can be taken out. Run it after putting "
        "the new key first, before taking the old one out."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        unreadable = []
        for upstream in Upstream.objects.exclude(headers_encrypted="").order_by("pk"):
            try:
                reencrypt_headers(upstream=upstream)
            except SecretsUnreadable:
                self.stderr.write(f"{upstream.name}: no key reads its headers; enter them again.")
                unreadable.append(upstream.name)
                continue
            self.stdout.write(f"{upstream.name}: headers encrypted with the first key")
        if unreadable:
            raise CommandError(f"Could not read the headers of {', '.join(unreadable)}.")
