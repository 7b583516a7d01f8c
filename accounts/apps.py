from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "People"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from accounts import lockout

        # Each lockout of the sign-in form is an audit event.
        user_locked_out.connect(lockout.on_locked_out, dispatch_uid="accounts.locked_out")
