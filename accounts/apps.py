from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "People"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_logged_in

        from accounts import lockout, two_factor

        # Each lockout of the sign-in form is an audit event.
        user_locked_out.connect(lockout.on_locked_out, dispatch_uid="accounts.locked_out")
        # Each sign-in is noted in its session: a first second factor takes a recent one.
        user_logged_in.connect(two_factor.on_login, dispatch_uid="accounts.signed_in_at")
