from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.oidc import link_identity


class Command(BaseCommand):
    help = (
        "Link an account to a person at the single sign-on provider (their sub claim), so "
        "that their SSO sign-in opens it. A sign-in is never matched to an account by name."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="The Countersign account.")
        parser.add_argument("subject", help="The person's sub claim at the provider.")

    def handle(self, *args: Any, **options: Any) -> None:
        people = get_user_model()._default_manager
        user = people.filter(**{get_user_model().USERNAME_FIELD: options["username"]}).first()
        if user is None:
            raise CommandError(f"No account named {options['username']!r}.")
        try:
            link_identity(user=user, subject=options["subject"])
        except ValueError as problem:
            raise CommandError(str(problem)) from None
        self.stdout.write(f"{user.get_username()} signs in as {options['subject'].strip()!r}.")
